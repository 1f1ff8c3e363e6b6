"""PostgreSQL stalls mid-query while its TCP connection stays up: the client-side deadline
(consistency.stores.deadline) ends the run with exit 2 naming the store.

Neither the server's statement timeout nor TCP keepalives help here: behind a hung proxy
the server's answer (or its timeout error) never arrives, a frozen backend never even
times out, and the kernel acknowledges every keepalive probe.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connections
from psycopg import sql
from pytest_django.fixtures import Settings as SettingsWrapper

from consistency.stores.deadline import shown_seconds, statement_timeout_of
from project.env import statement_timeout_options
from tests.faultproxy import FaultProxy
from tests.reliability.conftest import (
    HANG_GUARD,
    audit_blocked_on_lock,
    command,
    finishes,
    reliability_db,
)
from tests.reliability.test_store_faults import assert_failed_run, drift_records, plant_drift

pytestmark = reliability_db

# Long enough that the audit's scan is seen waiting for the locked table (and the stall set
# up) before the server would cancel it; the deadline is this plus GRACE.
STATEMENT_TIMEOUT = 5
GRACE = 1


@contextmanager
def server_statement_timeout(seconds: float) -> Iterator[None]:
    """The ``auth`` database gives new sessions a ``seconds`` s statement timeout (ALTER
    DATABASE ... SET, from the ``default`` alias: the aliases share the server)."""
    name = sql.Identifier(connections.settings["auth"]["NAME"])
    with connections["default"].cursor() as cursor:
        cursor.execute(
            sql.SQL("ALTER DATABASE {} SET statement_timeout = {}").format(name, round(seconds * 1000))
        )
    try:
        yield
    finally:
        with connections["default"].cursor() as cursor:
            cursor.execute(sql.SQL("ALTER DATABASE {} RESET statement_timeout").format(name))


def without_statement_timeout(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without the libpq ``options`` that DATABASE_STATEMENT_TIMEOUT sets."""
    return {k: v for k, v in options.items() if k != "options"}


@pytest.fixture(params=["options", "server"])
def auth_deadline(
    request: pytest.FixtureRequest, transactional_db: None, settings: SettingsWrapper
) -> Iterator[str]:
    """``auth`` sessions get a STATEMENT_TIMEOUT s statement timeout, from the connection's
    options (as DATABASE_STATEMENT_TIMEOUT sets it) or from the server only (a database
    setting, DATABASE_STATEMENT_TIMEOUT=0); the client-side deadline a GRACE s grace (as
    DATABASE_CLIENT_TIMEOUT_GRACE would set it). Yields how the deadline error names the timeout."""
    settings.DATABASE_CLIENT_TIMEOUT_GRACE = GRACE
    saved = dict(connections.settings["auth"].get("OPTIONS") or {})
    connections["auth"].close()
    try:
        if request.param == "options":
            connections.settings["auth"]["OPTIONS"] = {
                **saved,
                **statement_timeout_options(STATEMENT_TIMEOUT),
            }
            yield f"(statement timeout {STATEMENT_TIMEOUT} s"
        else:
            connections.settings["auth"]["OPTIONS"] = without_statement_timeout(saved)
            with server_statement_timeout(STATEMENT_TIMEOUT):
                yield f"(the server's statement timeout {STATEMENT_TIMEOUT} s"
    finally:
        connections["auth"].close()
        connections.settings["auth"]["OPTIONS"] = saved


@pytest.mark.parametrize("stall", ["hung_proxy", "frozen_backend"])
def test_postgres_stall_mid_query__client_deadline_ends_the_run(
    seeded: int, auth_proxy: FaultProxy, auth_deadline: str, stall: str
) -> None:
    plant_drift()
    assert finishes(lambda: command("users"))[0] == 1
    before = drift_records()
    assert len(before) == 1

    stopped: list[int] = []
    with audit_blocked_on_lock(auth_proxy, wait=STATEMENT_TIMEOUT - 1) as blocked:
        try:
            if stall == "hung_proxy":
                auth_proxy.set("blackhole")  # the answer, or the timeout error, stays in the proxy
            else:
                os.kill(blocked.pid, signal.SIGSTOP)  # the backend can neither answer nor time out
                stopped.append(blocked.pid)
            blocked.locker.rollback()
            blocked.runner.join(HANG_GUARD)
        finally:
            for stopped_pid in stopped:
                os.kill(stopped_pid, signal.SIGCONT)  # never leave a stopped backend behind
            auth_proxy.heal()
    code, out, message = blocked.result()
    assert_failed_run(code, message, "users", ("PostgreSQL database 'auth'",))
    assert f"no answer within {STATEMENT_TIMEOUT + GRACE} s {auth_deadline}" in message
    assert "canceling statement" not in message  # not the server's own timeout
    assert "no drift" not in out.lower()
    assert drift_records() == before


def _wrapped(alias: str) -> bool:
    """Whether ``alias``'s current psycopg connection has the deadline on its waits."""
    connections[alias].ensure_connection()
    return "wait" in vars(connections[alias].connection)  # psycopg's own method, or the deadline's


def test_no_statement_timeout__no_deadline(transactional_db: None) -> None:
    """DATABASE_STATEMENT_TIMEOUT=0 and none on the server: the server never cancels, and the
    client never gives up; a statement timeout set in either place brings the deadline."""
    saved = dict(connections.settings["auth"].get("OPTIONS") or {})
    connections["auth"].close()
    connections.settings["auth"]["OPTIONS"] = without_statement_timeout(saved)
    try:
        assert not _wrapped("auth")
        connections["auth"].close()
        with server_statement_timeout(STATEMENT_TIMEOUT):
            assert _wrapped("auth")
            connections["auth"].close()
        connections.settings["auth"]["OPTIONS"] = {**saved, **statement_timeout_options(STATEMENT_TIMEOUT)}
        assert _wrapped("auth")
    finally:
        connections["auth"].close()
        connections.settings["auth"]["OPTIONS"] = saved


def test_statement_timeout_of__options_and_show() -> None:
    assert statement_timeout_of("-c statement_timeout=5000") == 5
    assert statement_timeout_of("-c statement_timeout=2s -c statement_timeout=1500ms") == 1.5
    assert statement_timeout_of("-c work_mem=64MB") == 0
    shown = {value: shown_seconds(value) for value in ("0", "1500ms", "5s", "90min", "1h", "2d")}
    assert shown == {"0": 0, "1500ms": 1.5, "5s": 5, "90min": 5400, "1h": 3600, "2d": 172800}


def test_server_answers__its_timeout_error_wins_and_slow_queries_within_it_finish(
    auth_deadline: str,
) -> None:
    """The deadline only ends calls the server never answers: a statement shorter than the
    statement timeout finishes, a longer one gets the server's own error, not the deadline's."""
    from django.db import OperationalError

    with connections["auth"].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [STATEMENT_TIMEOUT - 2])
        with pytest.raises(OperationalError, match="canceling statement due to statement timeout"):
            cursor.execute("SELECT pg_sleep(%s)", [STATEMENT_TIMEOUT + GRACE + 2])
    connections["auth"].close()
