"""Fixtures for sync tests: committed data on both aliases and a real Celery worker.

The worker runs in a thread of the test process (``start_worker``) and consumes
the real broker named by CELERY_BROKER_URL; tests are ``transaction=True`` so it
sees what they commit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from celery.contrib.testing.worker import start_worker
from django.core.cache import caches
from django.db import connections
from kombu import Connection

from project.celery import app as celery_app

T = TypeVar("T")
DATABASES = ["default", "auth"]
sync_db = pytest.mark.django_db(transaction=True, databases=DATABASES)


def wait_until(probe: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(0.05)


def purge_broker() -> int:
    """Drop every message waiting in the broker (triggers left by earlier tests), and on Redis the
    ones a dead worker still holds unacknowledged (they would come back after the visibility timeout)."""
    with celery_app.connection_for_write() as conn:
        purged = int(celery_app.control.purge(connection=conn) or 0)
        if conn.transport.driver_type == "redis":
            channel: Any = conn.default_channel  # kombu's Redis channel
            channel.client.delete(channel.unacked_key, channel.unacked_index_key)
    return purged


def _drop_broker_connections() -> None:
    celery_app.close()  # the connection pool
    celery_app.amqp._producer_pool = None  # type: ignore[attr-defined]  # publishers built on it


@contextmanager
def using_broker(url: str) -> Iterator[None]:
    """Point this process's Celery app (task publishing, control commands) at ``url``, then back.

    Celery reads ``CELERY_BROKER_URL`` from the environment before its settings, each time it
    connects; the pools built on the previous broker are dropped on the way in and out.
    """
    before = os.environ.get("CELERY_BROKER_URL")
    os.environ["CELERY_BROKER_URL"] = url
    _drop_broker_connections()
    try:
        yield
    finally:
        if before is None:
            del os.environ["CELERY_BROKER_URL"]
        else:
            os.environ["CELERY_BROKER_URL"] = before
        _drop_broker_connections()


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    caches["default"].clear()
    yield
    caches["default"].clear()


@pytest.fixture
def worker(transactional_db: None) -> Iterator[object]:
    """A real Celery worker (solo pool, in a thread) on the configured broker."""
    assert not celery_app.conf.task_always_eager, "sync tests need a broker (CELERY_BROKER_URL)"
    purge_broker()
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=30) as w:
        yield w
    for alias in connections:
        connections[alias].close()


ROOT = Path(__file__).resolve().parents[2]


def db_url(alias: str) -> str:
    """A postgres:// URL of the (test) database behind ``alias``, for another process."""
    conf = connections[alias].settings_dict
    auth = quote(conf["USER"] or "")
    if conf.get("PASSWORD"):
        auth += ":" + quote(conf["PASSWORD"])
    return f"postgres://{auth}@{conf['HOST'] or '127.0.0.1'}:{conf['PORT'] or 5432}/{conf['NAME']}"


def start_worker_process(
    broker_url: str,
    *,
    visibility_timeout: int = 900,
    log: Path,
    prefork: bool = False,
    name: str = "sync-test",
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``celery -A project worker`` in its own process, on the test databases and ``broker_url``,
    once it answers a ping (through the test process's app, on the same broker).

    ``--pool solo`` by default; ``prefork=True`` runs ``--pool prefork --concurrency 1`` in a
    session of its own, so the crash tests can kill the worker and its pool child at once
    (``os.killpg``). ``env`` overrides the worker's environment."""
    name = f"{name}-{uuid.uuid4().hex[:8]}@localhost"
    full = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.sync.worker_settings",
        "DATABASE_URL": db_url("default"),
        "AUTH_DATABASE_URL": db_url("auth"),
        "CELERY_BROKER_URL": broker_url,
        "TEST_VISIBILITY_TIMEOUT": str(visibility_timeout),
        **(env or {}),
    }
    pool = ["--pool", "prefork", "--concurrency", "1"] if prefork else ["--pool", "solo"]
    command = [sys.executable, "-m", "celery", "--quiet", "-A", "project", "worker", *pool, "-n", name]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=prefork
        )

    def started() -> bool:
        # The worker's own "ready" line (logged once its consumer started), else an answer to a
        # ping: in one CI run a prefork worker on RabbitMQ logged "ready" and then answered no
        # ping for 60 s.
        if proc.poll() is not None or f"{name} ready." in log.read_text(errors="replace"):
            return True
        return bool(celery_app.control.ping(destination=[name], timeout=0.5))

    try:
        wait_until(started, timeout=60, what=f"worker {name} to be ready")
    except AssertionError:
        if prefork:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        else:
            stop_worker_process(proc)
        raise
    assert proc.poll() is None, f"the worker exited ({proc.returncode}); see {log}"
    return proc


def stop_worker_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A RabbitMQ broker of this test session alone: ``RABBITMQ_URL`` if set, else a fresh vhost
    on the local server (amqp://guest:guest@127.0.0.1:5672), created with rabbitmqctl and dropped."""
    if os.environ.get("RABBITMQ_URL"):
        yield os.environ["RABBITMQ_URL"]
        return
    ctl = shutil.which("rabbitmqctl")
    try:
        with Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        pytest.skip(f"no RabbitMQ on 127.0.0.1:5672 ({type(exc).__name__}); set RABBITMQ_URL")
    if ctl is None:
        pytest.skip("rabbitmqctl not found to create a test vhost; set RABBITMQ_URL")
    vhost = f"consistency-test-{uuid.uuid4().hex[:8]}"
    subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, capture_output=True)
    try:
        subprocess.run(
            [ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run([ctl, "-q", "delete_vhost", vhost], check=False, capture_output=True)
