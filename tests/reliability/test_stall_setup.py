"""PostgreSQL stalls while a connection is being set up: the connect timeout bounds the
start-up handshake (psycopg's) and the statements Django runs on a new connection before
handing it out (consistency.stores.deadline); either way the run ends with exit 2 naming the
store, instead of waiting forever.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connections

from tests.faultproxy import FaultProxy
from tests.reliability.conftest import STORE_TIMEOUT, command, finishes, reliability_db
from tests.reliability.test_store_faults import assert_failed_run, drift_records, plant_drift

pytestmark = reliability_db

# The server's ReadyForQuery message (idle): the last message of a connection's start-up,
# after which Django sends its set-up statements (SET TIME ZONE, SET ROLE).
READY_FOR_QUERY = b"Z\x00\x00\x00\x05I"
# A hang guard, not a performance claim: a run the deadline ends takes about STORE_TIMEOUT s.
GUARD = 60.0


@pytest.fixture
def set_up_statement(auth_proxy: FaultProxy) -> Iterator[None]:
    """``auth`` connections run a SET ROLE on set-up (to the role they log in as), so that they
    have a set-up statement whatever the server's time zone."""
    saved = dict(connections.settings["auth"]["OPTIONS"])
    connections["auth"].close()
    role = connections.settings["auth"]["USER"]
    connections.settings["auth"]["OPTIONS"] = {**saved, "assume_role": role}
    yield
    connections["auth"].close()
    connections.settings["auth"]["OPTIONS"] = saved


def _audit_with(proxy: FaultProxy, **fault: bytes) -> tuple[int, str, str]:
    """A ``users`` audit whose ``auth`` connection is opened while ``proxy`` has ``fault``."""
    plant_drift()
    assert finishes(lambda: command("users"))[0] == 1
    before = drift_records()
    assert len(before) == 1
    connections["auth"].close()
    mode = "stall_after" if fault else "blackhole"
    with proxy.fault(mode, **fault):  # type: ignore[arg-type]
        code, out, message = finishes(lambda: command("users"), GUARD)
    assert_failed_run(code, message, "users", ("PostgreSQL database 'auth'",))
    assert "no drift" not in out.lower()
    assert drift_records() == before
    return code, out, message


def test_postgres_stalls_after_start_up__set_up_statements_time_out(
    seeded: int, auth_proxy: FaultProxy, set_up_statement: None
) -> None:
    """The server completes the start-up handshake, then never answers Django's SET TIME ZONE."""
    _, _, message = _audit_with(auth_proxy, stall_after=READY_FOR_QUERY)
    assert "QueryDeadlineExceeded" in message
    assert f"no answer within {STORE_TIMEOUT} s while setting up the connection" in message


def test_postgres_stalls_on_accept__connect_timeout_ends_the_run(seeded: int, auth_proxy: FaultProxy) -> None:
    """The peer accepts the TCP connection and never answers the start-up message: psycopg's
    connect timeout (DATABASE_CONNECT_TIMEOUT) ends the attempt."""
    _, _, message = _audit_with(auth_proxy)
    assert "connection timeout expired" in message
