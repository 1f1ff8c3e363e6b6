"""Load against a pooled connection set (psycopg's pool through Django's ``pool`` option,
configured as DATABASE_POOL_MAX_SIZE / DATABASE_POOL_TIMEOUT configure it): a burst of 50
concurrent audits and cache reads, sustained load, and an exhausted pool ending in a named
timeout error (exit 2), never a hang, then recovery once the holders let go.

No assertion here is about time: every figure asserted is a count or a set of keys; the
hang guard (``finishes``) only fails a test that never ends. ``RELIABILITY_LOAD_SECONDS``
sets how long the sustained test runs (10 s unless set; ``python -m tests.reliability.report``
runs it for 60 s).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pytest
from django.core.cache import caches
from django.db import DatabaseError, connections

from consistency.auth_service.models import AuthUser
from consistency.backend.models import User
from consistency.cachekeys import auth_user_payload, backend_user_payload
from consistency.engine.registry import registry
from consistency.engine.runner import AuditOptions, run_audit
from consistency.models import AuditRun, CheckRun, Drift
from consistency.stores.errors import describe_failure
from consistency.sync.cache import read_auth_user, read_backend_user
from tests.reliability.conftest import (
    POOLED_APPLICATION,
    command,
    drift_target,
    finishes,
    make_users,
    pool_of,
    pooled,
    release_connections,
    reliability_db,
)

pytestmark = reliability_db

CHECKS = ("users", "cache_auth_users")
LOAD_SECONDS = float(os.environ.get("RELIABILITY_LOAD_SECONDS") or 10)
Expected = dict[str, tuple[dict[str, Any], dict[str, Any]]]


def pool_size_for(audits: int) -> int:
    """Connections per alias that ``audits`` concurrent audits need to run without waiting: one
    scan side's each (the calling thread gives its connection back before the scan, see
    ``test_concurrent_audits_share_a_small_pool``), plus one for everything else. A side of a
    large table adds helper connections only when the pool has them to spare."""
    return audits + 1


@pytest.fixture
def users() -> tuple[list[str], list[str], Expected]:
    """40 user pairs, 2 of them drifted in the backend, an empty cache: (ids, drifted, payloads)."""
    ids = make_users(40)
    drifted = ids[:2]
    drift_target(drifted)
    caches["default"].clear()
    auth = {u.pk: auth_user_payload(u) for u in AuthUser.objects.using("auth").filter(pk__in=ids)}
    backend = {u.pk: backend_user_payload(u) for u in User.objects.using("default").filter(pk__in=ids)}
    return ids, drifted, {pk: (auth[pk], backend[pk]) for pk in ids}


def audit_request() -> tuple[int, dict[str, set[str]], str]:
    """One audit of CHECKS, as a request: (exit code, drift keys by check, error message)."""
    try:
        code, out, error = command(*CHECKS, "--format", "json", "--limit", "1000")
    finally:
        release_connections()
    keys: dict[str, set[str]] = {}
    if out:
        keys = {c["name"]: {d["key"] for d in c["drifts"]} for c in json.loads(out)["checks"]}
    return code, keys, error


def read_request(pk: str, expected: Expected) -> str:
    """One request reading user ``pk`` through the cache from both services: '' when both reads
    were right, else what went wrong."""
    try:
        got = (read_auth_user(pk), read_backend_user(pk))
    except Exception as exc:
        return describe_failure(exc)
    finally:
        release_connections()
    return "" if got == expected[pk] else f"{pk}: read {got}, expected {expected[pk]}"


def all_at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Start every call at the same moment, one thread each; their results, guarded against a hang."""
    start = threading.Barrier(len(calls))

    def released(call: Callable[[], Any]) -> Any:
        start.wait()
        return call()

    def burst() -> list[Any]:
        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            return [f.result() for f in [pool.submit(released, c) for c in calls]]

    return finishes(burst)


def backends(alias: str) -> int:
    """Server connections the pooled settings opened on ``alias``'s test database."""
    name = connections[alias].settings_dict["NAME"]
    with connections["auth"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            [name, POOLED_APPLICATION],
        )
        return int(cursor.fetchone()[0])


# -- a burst of 50 ---------------------------------------------------------------------


def test_burst_of_50_audits_and_cache_reads(
    monkeypatch: pytest.MonkeyPatch,
    users: tuple[list[str], list[str], Expected],
    record_property: Callable[[str, object], None],
) -> None:
    """50 requests at once (6 audits, 44 cache reads) share ``pool_size_for(6)`` connections per
    database: all of them succeed with exact results, and the pools served them all."""
    ids, drifted, expected = users
    audits, burst = 6, 50
    size = pool_size_for(audits)
    record_property("pool_size", size)
    with pooled(monkeypatch, size, timeout=60):
        calls: list[Callable[[], Any]] = [audit_request] * audits
        calls += [partial(read_request, ids[n % len(ids)], expected) for n in range(burst - audits)]
        results = all_at_once(calls)
        stats = {alias: pool_of(alias).get_stats() for alias in ("default", "auth")}
    audited, reads = results[:audits], results[audits:]
    assert [error for code, _, error in audited if code != 1] == []
    assert all(keys == {"users": set(drifted), "cache_auth_users": set()} for _, keys, _ in audited)
    assert [problem for problem in reads if problem] == []
    for alias, figures in stats.items():
        assert figures.get("requests_errors", 0) == 0, (alias, figures)
        assert figures["pool_max"] == size
        # The burst's requests went through the pool, more of them than it has connections.
        assert figures["requests_num"] > size, (alias, figures)
    assert AuditRun.objects.filter(status="drift").count() == audits


# -- sustained load --------------------------------------------------------------------


def test_sustained_load(
    monkeypatch: pytest.MonkeyPatch,
    users: tuple[list[str], list[str], Expected],
    record_property: Callable[[str, object], None],
) -> None:
    """Two auditors and four readers loop for RELIABILITY_LOAD_SECONDS against a pool of
    ``pool_size_for(2)`` per database: every audit exact, every read right, no pool error, no
    connection leaked."""
    ids, drifted, expected = users
    auditors, readers = 2, 4
    size = pool_size_for(auditors)
    record_property("pool_size", size)
    stop = threading.Event()
    problems: list[str] = []
    done = {"audits": 0, "reads": 0}
    lock = threading.Lock()

    def auditor() -> None:
        while True:  # at least one audit each, however short the run
            code, keys, error = audit_request()
            with lock:
                done["audits"] += 1
                if code != 1 or keys != {"users": set(drifted), "cache_auth_users": set()}:
                    problems.append(f"audit: exit {code} {keys} {error}")
            if stop.is_set():
                return

    def reader(offset: int) -> None:
        n = offset
        while True:
            problem = read_request(ids[n % len(ids)], expected)
            n += readers
            with lock:
                done["reads"] += 1
                if problem:
                    problems.append(f"read: {problem}")
            if stop.is_set():
                return

    with pooled(monkeypatch, size, timeout=30):
        timer = threading.Timer(LOAD_SECONDS, stop.set)
        timer.start()
        try:
            all_at_once([auditor] * auditors + [partial(reader, n) for n in range(readers)])
        finally:
            timer.cancel()
            stop.set()
        stats = {alias: pool_of(alias).get_stats() for alias in ("default", "auth")}
        open_backends = {alias: backends(alias) for alias in ("default", "auth")}
        release_connections()
    record_property("load_seconds", LOAD_SECONDS)
    record_property("audits", done["audits"])
    record_property("cache_reads", done["reads"])
    assert problems == []
    assert done["audits"] >= auditors
    assert done["reads"] >= readers
    for alias, figures in stats.items():
        assert figures.get("requests_errors", 0) == 0, (alias, figures)
        # psycopg's pool never opened more connections than its size: none leaked past it.
        assert open_backends[alias] <= size, (alias, open_backends, figures)
    assert CheckRun.objects.filter(status="error").count() == 0
    assert set(Drift.objects.filter(check_name="users").values_list("key", flat=True)) == set(drifted)


# -- an exhausted pool -------------------------------------------------------------------


@pytest.fixture
def holders() -> Iterator[Callable[[str, int], None]]:
    """``hold(alias, n)``: n threads each take a pooled connection on ``alias`` and keep it until
    the test lets go (at the end, or by calling ``hold.release()``)."""
    release = threading.Event()
    threads: list[threading.Thread] = []

    def hold(alias: str, count: int) -> None:
        taken = threading.Barrier(count + 1)

        def keep() -> None:
            try:
                connections[alias].ensure_connection()
            except BaseException:
                taken.abort()  # the test fails at once instead of waiting for the others
                raise
            try:
                taken.wait()
                release.wait()
            finally:
                connections[alias].close()

        for _ in range(count):
            threads.append(threading.Thread(target=keep, daemon=True))
            threads[-1].start()
        taken.wait(timeout=60)

    def let_go() -> None:
        release.set()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads)

    hold.release = let_go  # type: ignore[attr-defined]
    yield hold
    let_go()


@pytest.mark.parametrize("alias", ["auth", "default"])
def test_pool_exhausted__named_timeout_then_recovery(
    monkeypatch: pytest.MonkeyPatch,
    users: tuple[list[str], list[str], Expected],
    holders: Any,
    alias: str,
) -> None:
    """Every connection of one database's pool held elsewhere: an audit and a cache read each
    fail with a PoolTimeout naming the database (the audit exits 2, the drift records stay as
    they were); once the holders let go, both succeed again."""
    ids, drifted, expected = users
    uncached = ids[-1]  # never read before: a read must go to the database
    with pooled(monkeypatch, 2, timeout=1):
        assert finishes(audit_request)[0] == 1
        before = list(Drift.objects.order_by("pk").values())
        last_run = AuditRun.objects.order_by("-pk").values_list("pk", flat=True).first()
        release_connections()  # this thread's connections go back: the holders take the whole pool
        holders(alias, 2)

        code, _, error = finishes(audit_request)
        problem = finishes(lambda: read_request(uncached, expected))
        holders.release()

        assert code == 2, error
        assert "PoolTimeout: couldn't get a connection after 1" in error
        assert f"PostgreSQL database '{alias}' failed: PoolTimeout" in problem
        if alias == "default":  # the run cannot even be recorded
            assert "cannot record the audit in the 'default' database" in error
            assert not AuditRun.objects.filter(pk__gt=last_run).exists()
        else:
            assert "PostgreSQL database 'auth' failed: PoolTimeout" in error
            new_runs = AuditRun.objects.filter(pk__gt=last_run).values_list("status", flat=True)
            assert list(new_runs) == ["error"]
        release_connections()
        assert finishes(lambda: read_request(uncached, expected)) == ""
        code, keys, error = finishes(audit_request)
        assert (code, keys) == (1, {"users": set(drifted), "cache_auth_users": set()}), error
    after = Drift.objects.order_by("pk").values_list("id", "key", "status")
    assert list(after) == [(d["id"], d["key"], d["status"]) for d in before]


# -- audits queue for a small pool ------------------------------------------------------


def test_concurrent_audits_share_a_small_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two audits of `users` at once against a pool of two connections per database: both should
    queue for connections and succeed."""
    drift_target(make_users(10)[:1])
    registry.autodiscover()
    users_check = registry.get("users")
    together = threading.Barrier(2)

    def progress_for(decl: Any) -> None:
        together.wait(timeout=60)  # both runs are recorded (each holds a connection) before either scans
        return None

    def audit() -> str:
        try:
            run, _ = run_audit([users_check], AuditOptions(settle=0), progress_for)
            return str(run.status)
        except DatabaseError as exc:
            return describe_failure(exc)
        finally:
            release_connections()

    with pooled(monkeypatch, 2, timeout=1):
        statuses = all_at_once([audit, audit])
    assert statuses == ["drift", "drift"], statuses
