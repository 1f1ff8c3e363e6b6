"""A worker process killed with SIGKILL in the middle of a relay loses nothing and duplicates nothing.

Real ``celery -A project worker`` processes, a real ``kill -9``. The relay task is acked
late, so the message the killed worker held goes back to the queue: Redis hands it out
again once its visibility timeout (shortened to 2 s for the worker here) has passed,
RabbitMQ as soon as the dead worker's connection closes. No sweep runs and no other task
is sent, so only that redelivery can finish the job.

To stop the worker at a chosen point, the test holds a row lock the relay needs:
``before_backend_commit`` locks a backend user the batch upserts (the relay waits inside
its backend transaction); ``after_backend_commit`` locks the session a relayed delete
revokes (the backend transaction has committed, the claim on the outbox has not).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.utils import timezone

from consistency.auth_service.models import AuthSession, Outbox, OutboxVersion
from consistency.backend.models import User
from consistency.models import UserSyncState
from consistency.sync import auth_users, relay
from consistency.tasks import relay_outbox
from project.celery import app
from tests.sync.conftest import (
    db_url,
    purge_broker,
    start_worker_process,
    stop_worker_process,
    sync_db,
    using_broker,
    wait_until,
)

pytestmark = sync_db


@pytest.fixture
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The broker of this test's workers; the test process publishes there too."""
    if request.param == "redis":
        yield str(app.conf.broker_url)
        return
    url = str(request.getfixturevalue("rabbitmq_url"))
    with using_broker(url):
        assert app.connection_for_write().transport.driver_type == "amqp"
        yield url


def waiting_on_lock(conn: psycopg.Connection[Any], query_start: str) -> list[int]:
    """Pids of the sessions on ``conn``'s database waiting for a lock in a ``query_start...`` query."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND wait_event_type = 'Lock' AND query LIKE %s",
        [query_start + "%"],
    ).fetchall()
    return [pid for (pid,) in rows]


def alive(conn: psycopg.Connection[Any], pids: list[int]) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids]).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize(
    ("broker_url", "point"),
    [
        ("redis", "before_backend_commit"),
        ("redis", "after_backend_commit"),
        ("rabbitmq", "after_backend_commit"),
    ],
    indirect=["broker_url"],
)
def test_kill_9__mid_relay_loses_nothing_and_duplicates_nothing(
    broker_url: str, point: str, tmp_path: Path
) -> None:
    auth_users.create_user(email="keep@corp.io", user_id="u-keep", full_name="before")
    auth_users.create_user(email="gone@corp.io", user_id="u-gone")
    assert relay.relay_pending().applied == 2
    AuthSession.objects.create(
        id="s-gone",
        user_id="u-gone",
        refresh_token_hash="x",
        expires_at=timezone.now() + dt.timedelta(days=1),
    )

    # Three changes; their after-commit triggers are dropped, then exactly one relay task is sent.
    auth_users.update_user("u-keep", full_name="after")
    auth_users.delete_user("u-gone")
    auth_users.create_user(email="new@corp.io", user_id="u-new")
    purge_broker()
    assert relay.pending_count() == 3

    if point == "before_backend_commit":
        url, lock, blocked_query = (
            db_url("default"),
            "SELECT id FROM users WHERE id = %s FOR UPDATE",
            "INSERT",
        )
        locked = ["u-keep"]
    else:
        url, lock, blocked_query = (
            db_url("auth"),
            "SELECT id FROM auth_sessions WHERE id = %s FOR UPDATE",
            "UPDATE",
        )
        locked = ["s-gone"]
    log = tmp_path / "worker.log"
    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as observer:
        assert len(holder.execute(lock, locked).fetchall()) == 1  # held until the rollback below
        first = start_worker_process(broker_url, visibility_timeout=2, log=log)
        try:
            relay_outbox.delay()
            blocked = wait_until(lambda: waiting_on_lock(observer, blocked_query), what="the relay to block")
            # The worker is inside the relay: its claim holds all three events, uncommitted.
            assert relay.pending_count() == 3
            backend_done = point == "after_backend_commit"
            assert User.objects.filter(pk="u-new").exists() is backend_done
            assert User.objects.filter(pk="u-gone").exists() is not backend_done
            applied_before_kill = dict(UserSyncState.objects.values_list("user_id", "applied_at"))

            os.kill(first.pid, signal.SIGKILL)
            assert first.wait(timeout=30) == -signal.SIGKILL
        finally:
            stop_worker_process(first, signal.SIGKILL)
            holder.rollback()  # the dead worker's sessions now see their client gone and roll back
        wait_until(lambda: not alive(observer, blocked), what="the killed worker's sessions to end")
    assert relay.pending_count() == 3  # the claim died with the worker: nothing lost

    second = start_worker_process(broker_url, visibility_timeout=2, log=log)
    try:
        wait_until(lambda: relay.pending_count() == 0, timeout=60, what="the redelivered relay")
    finally:
        stop_worker_process(second)

    assert {u.pk: u.full_name for u in User.objects.all()} == {"u-keep": "after", "u-new": ""}
    # Each event marked processed once, and every user at its last version.
    assert list(Outbox.objects.values_list("attempts", flat=True).distinct()) == [1]
    assert dict(UserSyncState.objects.values_list("user_id", "version")) == dict(
        OutboxVersion.objects.values_list("user_id", "version")
    )
    assert AuthSession.objects.get(pk="s-gone").is_active is False
    if point == "after_backend_commit":
        # The replay found every version applied already and wrote nothing again.
        assert dict(UserSyncState.objects.values_list("user_id", "applied_at")) == applied_before_kill
    assert "relay_outbox" in log.read_text() or "consistency.relay_outbox" in log.read_text()
