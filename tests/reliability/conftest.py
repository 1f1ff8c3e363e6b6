"""Fixtures for the reliability tests: real stores, reached through a fault proxy.

``pg_proxy``, ``redis_proxy`` and ``clickhouse_proxy`` put a ``FaultProxy``
(tests/faultproxy.py) between this process and the real PostgreSQL, Redis and
ClickHouse servers, with short timeouts so a fault ends a run in seconds.
``seeded`` fills every store but Milvus with one small consistent data set.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import StringIO
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import psycopg
import pytest
from django.conf import settings
from django.core.cache import caches
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import override_settings
from psycopg_pool import ConnectionPool

from consistency.auth_service.models import AuthUser
from consistency.backend.models import User
from consistency.stores.analytics import close_analytics, get_analytics
from project import env
from project.env import statement_timeout_options
from tests.faultproxy import FaultProxy
from tests.sync.conftest import wait_until

T = TypeVar("T")
DATABASES = ["default", "auth"]
reliability_db = pytest.mark.django_db(transaction=True, databases=DATABASES)

# Long enough for a healthy run on a loaded 2-core machine, short enough that a
# fault ends a test quickly.
STORE_TIMEOUT = 3
# A hang guard, not a performance claim: a faulted run must end at all.
HANG_GUARD = 120.0


def finishes(call: Callable[[], T], guard: float = HANG_GUARD) -> T:
    """Run ``call`` in a thread; fail the test if it is still running after ``guard`` seconds."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:
            box["error"] = exc
        finally:
            for alias in connections:
                connections[alias].close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(guard)
    assert not thread.is_alive(), f"still running after {guard}s: the fault made it hang"
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def command(*args: str) -> tuple[int, str, str]:
    """``(exit code, stdout, error message)`` of ``manage.py checkconsistency ARGS`` (``--settle 0``
    unless ARGS set it)."""
    out, err = StringIO(), StringIO()
    try:
        settle = () if "--settle" in args else ("--settle", "0")
        call_command("checkconsistency", *args, *settle, "--no-progress", stdout=out, stderr=err)
    except CommandError as exc:
        return exc.returncode, out.getvalue(), str(exc)
    return 0, out.getvalue(), ""


def _proxied(aliases: list[str]) -> Iterator[FaultProxy]:
    saved = {a: dict(connections.settings[a]) for a in aliases}
    host, port = saved[aliases[0]]["HOST"], saved[aliases[0]]["PORT"]
    proxy = FaultProxy(host or "127.0.0.1", int(port or 5432))
    for alias in aliases:
        connections[alias].close()
        options = dict(connections.settings[alias].get("OPTIONS") or {})
        connections.settings[alias]["OPTIONS"] = {**options, "connect_timeout": STORE_TIMEOUT}
        connections.settings[alias].update(HOST="127.0.0.1", PORT=str(proxy.port))
    yield proxy
    proxy.heal()
    for alias in aliases:
        connections[alias].close()
        connections.settings[alias].clear()
        connections.settings[alias].update(saved[alias])
    proxy.close()


@pytest.fixture
def pg_proxy(transactional_db: None) -> Iterator[FaultProxy]:
    """Both database aliases through one proxy (they share the server)."""
    yield from _proxied(DATABASES)


@pytest.fixture
def auth_proxy(transactional_db: None) -> Iterator[FaultProxy]:
    """Only the ``auth`` alias through the proxy: runs are still recorded on ``default``."""
    yield from _proxied(["auth"])


@pytest.fixture
def auth_statement_timeout(transactional_db: None) -> Iterator[None]:
    """``auth`` connections get the statement timeout DATABASE_STATEMENT_TIMEOUT would set (2 s)."""
    saved = dict(connections.settings["auth"].get("OPTIONS") or {})
    connections["auth"].close()
    connections.settings["auth"]["OPTIONS"] = {**saved, **statement_timeout_options(2)}
    yield
    connections["auth"].close()
    connections.settings["auth"]["OPTIONS"] = saved


def _redis_settings(port: int) -> dict[str, Any]:
    cache: dict[str, Any] = dict(settings.CACHES["default"])
    location = urlsplit(str(cache["LOCATION"]))
    cache["LOCATION"] = location._replace(netloc=f"127.0.0.1:{port}").geturl()
    cache["OPTIONS"] = {
        **cache["OPTIONS"],
        "SOCKET_CONNECT_TIMEOUT": STORE_TIMEOUT,
        "SOCKET_TIMEOUT": STORE_TIMEOUT,
    }
    return {**settings.CACHES, "default": cache}


@pytest.fixture
def redis_proxy() -> Iterator[FaultProxy]:
    parts = urlsplit(str(settings.CACHES["default"]["LOCATION"]))
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    with override_settings(CACHES=_redis_settings(proxy.port)):
        yield proxy
        proxy.heal()
        caches["default"].close()
    proxy.close()


@pytest.fixture
def analytics_db() -> Iterator[str]:
    """A fresh ClickHouse database for this test (dropped afterwards), in the settings."""
    database = f"h_rel_{uuid.uuid4().hex[:8]}"
    config = {**settings.CONSISTENCY, "CLICKHOUSE_DATABASE": database}
    with override_settings(CONSISTENCY=config):
        yield database
        close_analytics()
        get_analytics().execute(f"DROP DATABASE IF EXISTS `{database}`")
        close_analytics()


@pytest.fixture
def clickhouse_proxy(analytics_db: str) -> Iterator[FaultProxy]:
    parts = urlsplit(settings.CLICKHOUSE_URL)
    if parts.scheme not in ("clickhouse", "clickhouses"):
        pytest.fail(f"CLICKHOUSE_URL must name a ClickHouse server for these tests, got {parts.scheme}://")
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 9000)
    query = urlencode({"connect_timeout": STORE_TIMEOUT, "send_receive_timeout": STORE_TIMEOUT})
    netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
    url = parts._replace(netloc=netloc, query=query).geturl()
    with override_settings(CLICKHOUSE_URL=url):
        yield proxy
        proxy.heal()
        close_analytics()
    proxy.close()


@pytest.fixture
def seeded(transactional_db: None, analytics_db: str) -> int:
    """A small consistent data set in both databases, the cache and ClickHouse; returns the user count."""
    users = 12
    caches["default"].clear()
    call_command("seed", "--users", str(users), "--skip-vectors", "--flush", stdout=StringIO())
    close_analytics()
    return users


# -- users written directly on both sides (concurrency and load tests) ------------

OLD = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)  # an updated_at long before any audit


def make_users(count: int, prefix: str = "u") -> list[str]:
    """``count`` consistent auth/backend user pairs, last changed at ``OLD``; returns their ids.

    ``bulk_create`` sends no signals: no outbox events, no cache invalidations.
    """
    ids = [f"{prefix}{n:04d}" for n in range(count)]
    AuthUser.objects.using("auth").bulk_create(
        [AuthUser(id=i, email=f"{i}@users.test", full_name=f"Name {i}", updated_at=OLD) for i in ids]
    )
    User.objects.using("default").bulk_create(
        [User(id=i, email=f"{i}@users.test", full_name=f"Name {i}", updated_at=OLD) for i in ids]
    )
    return ids


def drift_target(ids: list[str], name: str = "Drifted") -> None:
    """Silent drift: the backend copies' names change, their updated_at does not."""
    User.objects.using("default").filter(pk__in=ids).update(full_name=name)


def release_connections() -> None:
    """What Django does at the end of a request: this thread's connections go back (to the pool)."""
    for alias in connections:
        connections[alias].close()


POOLED_APPLICATION = "consistency-pooled-test"


@contextmanager
def pooled(monkeypatch: pytest.MonkeyPatch, max_size: int, timeout: float) -> Iterator[dict[str, Any]]:
    """Both aliases through psycopg's pool, configured exactly as DATABASE_POOL_MAX_SIZE and
    DATABASE_POOL_TIMEOUT configure it (project.env); yields the pool options."""
    monkeypatch.setenv("DATABASE_POOL_MAX_SIZE", str(max_size))
    monkeypatch.setenv("DATABASE_POOL_TIMEOUT", str(timeout))
    options = env.database("DATABASE_URL", "unused.sqlite3")["OPTIONS"]
    assert isinstance(options, dict)
    pool = options["pool"]
    saved = {a: dict(connections.settings[a].get("OPTIONS") or {}) for a in DATABASES}
    for alias in DATABASES:
        connections[alias].close()
        # Tagged so that counting server connections sees this pool's (and any the app opens
        # past it on the alias), not those other tests' worker threads left open.
        connections.settings[alias]["OPTIONS"] = {
            **saved[alias],
            "pool": dict(pool),
            "application_name": POOLED_APPLICATION,
        }
    try:
        yield pool
    finally:
        for alias in DATABASES:
            connections[alias].close()
            connections[alias].close_pool()  # type: ignore[attr-defined]
            connections.settings[alias]["OPTIONS"] = saved[alias]


def pool_of(alias: str) -> ConnectionPool:
    pool = connections[alias].pool  # type: ignore[attr-defined]
    assert isinstance(pool, ConnectionPool), f"{alias} is not pooled"
    return pool


def auth_direct(proxy: FaultProxy | None) -> dict[str, Any]:
    """Connection parameters for `auth` that go around the proxy."""
    conf = connections.settings["auth"]
    host, port = proxy.upstream if proxy else (conf["HOST"] or "127.0.0.1", int(conf["PORT"] or 5432))
    direct = {"host": host, "port": port, "dbname": conf["NAME"], "user": conf["USER"]}
    if conf.get("PASSWORD"):
        direct["password"] = conf["PASSWORD"]
    return direct


@dataclass
class BlockedAudit:
    """``checkconsistency users`` running in a thread, its scan waiting on a locked ``auth_users``."""

    pid: int  # the scan's backend
    locker: psycopg.Connection[Any]  # holds the lock; ``rollback()`` lets the scan answer
    runner: threading.Thread
    outcome: list[Any]  # the command's (code, stdout, stderr), or what it raised

    def result(self) -> tuple[int, str, str]:
        assert not self.runner.is_alive(), "the audit still waits for an answer from the store"
        if isinstance(self.outcome[0], BaseException):
            raise self.outcome[0]
        code, out, message = self.outcome[0]
        return code, out, message


@contextmanager
def audit_blocked_on_lock(proxy: FaultProxy, wait: float) -> Iterator[BlockedAudit]:
    """Start ``checkconsistency users`` while another session (around ``proxy``) holds
    ``auth_users`` locked, and yield once the audit's scan waits on that lock (at most ``wait``
    seconds): the moment to break the store mid-query. The lock is held until the caller
    releases it or the block ends."""
    outcome: list[Any] = []

    def audit() -> None:
        try:
            outcome.append(finishes(lambda: command("users")))
        except BaseException as exc:
            outcome.append(exc)

    direct = auth_direct(proxy)
    with psycopg.connect(**direct) as locker, psycopg.connect(**direct, autocommit=True) as observer:
        locker.execute("LOCK TABLE auth_users IN ACCESS EXCLUSIVE MODE")
        runner = threading.Thread(target=audit, daemon=True)
        runner.start()
        waiting = wait_until(
            lambda: observer.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            ).fetchall(),
            timeout=wait,
            what="the audit's scan to wait for the locked table",
        )
        yield BlockedAudit(waiting[0][0], locker, runner, outcome)
