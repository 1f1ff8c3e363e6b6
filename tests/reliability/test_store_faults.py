"""A store that drops, stalls or resets during an audit: the run fails (exit 2) naming the
store, ends in bounded time, and leaves the earlier drift records as they were."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.cache import caches
from django.db import connections

from consistency.backend.models import User
from consistency.models import AuditRun, CheckRun, Drift
from consistency.stores.analytics import close_analytics
from project import env
from tests.faultproxy import FaultProxy, vanish_supported
from tests.reliability.conftest import (
    HANG_GUARD,
    audit_blocked_on_lock,
    command,
    finishes,
    reliability_db,
)

pytestmark = reliability_db


def drift_records() -> list[dict[str, Any]]:
    return [dict(d) for d in Drift.objects.order_by("pk").values()]


def plant_drift() -> str:
    """One backend user's name differs from its auth user's: drift in `users` and in the cache."""
    user = User.objects.order_by("pk").first()
    assert user is not None
    User.objects.filter(pk=user.pk).update(full_name="Drifted Name")
    return str(user.pk)


def assert_failed_run(code: int, message: str, check: str, store_words: tuple[str, ...]) -> None:
    assert code == 2, message
    assert check in message
    assert any(word in message for word in store_words), f"no store named in: {message}"
    run = AuditRun.objects.order_by("-pk").first()
    assert run is not None
    assert run.status == "error"
    failed = CheckRun.objects.get(run=run, check_name=check)
    assert failed.status == "error"
    assert any(word in failed.error for word in store_words)


# -- PostgreSQL ------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["reset", "blackhole", "close_after"])
def test_postgres_fault_mid_audit__exit_2_naming_the_store(
    seeded: int, auth_proxy: FaultProxy, fault: str
) -> None:
    plant_drift()
    code, _, _ = finishes(lambda: command("users"))
    assert code == 1
    before = drift_records()
    assert len(before) == 1
    healthy_bytes = auth_proxy.server_bytes
    assert healthy_bytes > 0

    if fault == "close_after":
        # Cut the auth database half-way through the bytes a healthy run reads.
        auth_proxy.set("close_after", close_after_bytes=healthy_bytes // 2)
    else:
        auth_proxy.set(fault)  # type: ignore[arg-type]
    code, out, message = finishes(lambda: command("users"))
    auth_proxy.heal()

    assert_failed_run(code, message, "users", ("PostgreSQL database 'auth'",))
    assert "no drift" not in out.lower()
    assert drift_records() == before


def test_postgres_statement_timeout__a_stalled_scan_fails_the_run(
    seeded: int, auth_statement_timeout: None
) -> None:
    """A table locked by another session stalls the scan; the statement timeout ends it."""
    plant_drift()
    assert finishes(lambda: command("users"))[0] == 1
    before = drift_records()
    locker = connections.create_connection("auth")
    try:
        with locker.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("LOCK TABLE auth_users IN ACCESS EXCLUSIVE MODE")
            code, _, message = finishes(lambda: command("users"))
            cursor.execute("ROLLBACK")
    finally:
        locker.close()
    assert_failed_run(code, message, "users", ("PostgreSQL database 'auth'",))
    assert "statement timeout" in message
    assert drift_records() == before


KEEPALIVE_ENV = {
    "DATABASE_KEEPALIVES_IDLE": "1",
    "DATABASE_KEEPALIVES_INTERVAL": "1",
    "DATABASE_KEEPALIVES_COUNT": "2",
    "DATABASE_TCP_USER_TIMEOUT": "3",
}


@pytest.mark.skipif(not vanish_supported(), reason="the vanish fault needs CAP_NET_ADMIN (TCP_REPAIR)")
def test_postgres_partition_mid_query__keepalives_end_the_run(
    seeded: int, auth_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The network to `auth` goes silent while the scan's query runs: no reply, no FIN, no RST.

    The server-side statement timeout cannot help (its error would never arrive); the TCP
    keepalives the environment configures make the client probe, learn the connection is
    gone and fail the run instead of waiting for a reply forever.
    """
    for variable, value in KEEPALIVE_ENV.items():
        monkeypatch.setenv(variable, value)
    options = env.database("AUTH_DATABASE_URL", "unused.sqlite3")["OPTIONS"]
    assert isinstance(options, dict)
    keepalives = {k: v for k, v in options.items() if k.startswith("keepalives") or k == "tcp_user_timeout"}
    assert keepalives == {
        "keepalives": 1,
        "keepalives_idle": 1,
        "keepalives_interval": 1,
        "keepalives_count": 2,
        "tcp_user_timeout": 3000,
    }
    connections["auth"].close()
    connections.settings["auth"]["OPTIONS"] = {**connections.settings["auth"]["OPTIONS"], **keepalives}

    plant_drift()
    assert finishes(lambda: command("users"))[0] == 1
    before = drift_records()

    with audit_blocked_on_lock(auth_proxy, wait=60) as blocked:
        auth_proxy.set("vanish")  # mid-query: the client is waiting for the reply
        blocked.locker.rollback()  # the server answers now, into the void
        blocked.runner.join(HANG_GUARD + 30)
    code, out, message = blocked.result()
    assert_failed_run(code, message, "users", ("PostgreSQL database 'auth'",))
    assert "statement timeout" not in message
    assert "no drift" not in out.lower()
    assert drift_records() == before


def test_default_database_down__exit_2_nothing_recorded(seeded: int, pg_proxy: FaultProxy) -> None:
    plant_drift()
    assert finishes(lambda: command("users"))[0] == 1
    before = drift_records()
    runs = AuditRun.objects.count()
    with pg_proxy.fault("reset"):
        code, _, message = finishes(lambda: command("users"))
    assert code == 2
    assert "'default' database" in message
    connections["default"].close()  # the proxy cut this thread's connection too
    assert AuditRun.objects.count() == runs
    assert drift_records() == before


# -- Redis -----------------------------------------------------------------------


def corrupt_cache_entry() -> str:
    reader: Any = caches["default"]  # django-redis
    key = next(iter(k for k in reader.iter_keys("auth:user:*")))
    reader.client.get_client(write=True).set(reader.make_key(key), b"{not json")
    return str(key)


@pytest.mark.parametrize("fault", ["reset", "blackhole", "close_after"])
def test_redis_fault_mid_audit__exit_2_naming_the_store(
    seeded: int, redis_proxy: FaultProxy, fault: str
) -> None:
    corrupt_cache_entry()
    code, _, _ = finishes(lambda: command("cache_auth_users"))
    assert code == 1
    before = drift_records()
    assert len(before) == 1
    healthy_bytes = redis_proxy.server_bytes
    caches["default"].close()

    if fault == "close_after":
        redis_proxy.set("close_after", close_after_bytes=healthy_bytes // 2)
    else:
        redis_proxy.set(fault)  # type: ignore[arg-type]
    code, _, message = finishes(lambda: command("cache_auth_users"))
    redis_proxy.heal()

    assert_failed_run(code, message, "cache_auth_users", ("Redis",))
    assert drift_records() == before


# -- ClickHouse --------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["reset", "blackhole", "close_after"])
def test_clickhouse_fault_mid_audit__exit_2_naming_the_store(
    seeded: int, clickhouse_proxy: FaultProxy, fault: str
) -> None:
    from consistency.backend.models import Message

    # One message changed without a signal: its event no longer matches.
    changed = Message.objects.order_by("pk").first()
    assert changed is not None
    Message.objects.filter(pk=changed.pk).update(content="drifted content")
    close_analytics()
    start = clickhouse_proxy.server_bytes
    code, out, _ = finishes(lambda: command("analytics_message_events", "--format", "json"))
    healthy_bytes = clickhouse_proxy.server_bytes - start
    assert code == 1, out
    before = drift_records()
    assert [d["key"] for d in before] == [str(changed.pk)]
    assert json.loads(out)["checks"][0]["drift_count"] == 1
    close_analytics()

    if fault == "close_after":
        clickhouse_proxy.set("close_after", close_after_bytes=healthy_bytes // 2)
    else:
        clickhouse_proxy.set(fault)  # type: ignore[arg-type]
    code, _, message = finishes(lambda: command("analytics_message_events"))
    clickhouse_proxy.heal()

    assert_failed_run(code, message, "analytics_message_events", ("clickhouse",))
    assert drift_records() == before
