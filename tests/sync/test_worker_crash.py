"""A worker killed with SIGKILL in the middle of a relay or a repair loses nothing and duplicates nothing.

Real ``celery -A project worker`` processes (the default prefork pool, one child), a real
``kill -9`` of the worker and its child at once. The relay and repair tasks are acked late,
so the message the killed worker held goes back to the queue: Redis hands it out again once
its visibility timeout (shortened to 2 s for the worker here) has passed, RabbitMQ as soon
as the dead worker's connection closes. No sweep runs and no other task is sent, so only
that redelivery can finish the job. (A prefork worker, not a solo one: a solo worker runs
the task inside its event loop, so even an early ack is only sent after the task returns and
a killed solo worker's task comes back whether it is acked late or not.)

To stop the worker at a chosen point, the test holds a row lock the task needs. Relay:
``before_backend_commit`` locks a backend user the batch upserts (the relay waits inside
its backend transaction); ``after_backend_commit`` locks the session a relayed delete
revokes (the backend transaction has committed, the claim on the outbox has not). Repair:
``mid_apply`` locks a backend user in the middle of the plan (the repair waits inside its
transaction); ``before_record`` locks a drift record (the repair has committed, the
transaction recording it has not).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.utils import timezone

from consistency.auth_service.models import AuthSession, AuthUser, Outbox, OutboxVersion
from consistency.backend.models import User
from consistency.models import Drift, RepairLog, UserSyncState
from consistency.sync import auth_users, relay
from consistency.tasks import relay_outbox, repair_drifts
from project.celery import app
from tests.reliability.conftest import OLD, command, make_users
from tests.sync.conftest import (
    db_url,
    purge_broker,
    stop_worker_process,
    sync_db,
    using_broker,
    wait_until,
)
from tests.sync.conftest import (
    start_worker_process as start_sync_worker,
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


def start_worker_process(broker_url: str, *, visibility_timeout: int, log: Path) -> subprocess.Popen[bytes]:
    """A prefork worker (``--concurrency 1``) in a session of its own, on the test databases and
    ``broker_url``, once it answers a ping; ``kill_worker`` kills it and its child."""
    return start_sync_worker(
        broker_url, visibility_timeout=visibility_timeout, log=log, prefork=True, name="crash-test"
    )


def kill_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and its pool child at once (its process group), as a lost host would."""
    with contextlib.suppress(ProcessLookupError):  # already dead
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


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

            kill_worker(first)
            assert first.returncode == -signal.SIGKILL
        finally:
            kill_worker(first)
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


# -- a worker killed in the middle of a repair ---------------------------------------------------


def source_users() -> dict[str, tuple[str, str, bool, str | None]]:
    return {
        u.pk: (u.email, u.full_name, u.is_active, u.hashed_password) for u in AuthUser.objects.using("auth")
    }


def target_users() -> dict[str, tuple[str, str, bool, str | None]]:
    return {u.pk: (u.email, u.full_name, u.is_active, u.hashed_password) for u in User.objects.all()}


def plant_user_drift() -> list[Drift]:
    """30 drifts of the `users` check, recorded by a real audit: 20 mismatched names, 5 backend
    users missing, 5 backend users the auth service does not have."""
    ids = make_users(40)
    # Not compared, but copied by a repair: the mismatched backend users lack it.
    AuthUser.objects.using("auth").update(hashed_password="md5$planted$hash")
    User.objects.filter(pk__in=ids[20:]).update(hashed_password="md5$planted$hash")
    User.objects.filter(pk__in=ids[:20]).update(full_name="Drifted")
    User.objects.filter(pk__in=ids[20:25]).delete()
    User.objects.bulk_create(
        [User(id=f"x{n}", email=f"x{n}@users.test", full_name="Extra", updated_at=OLD) for n in range(5)]
    )
    code, _, message = command("users")
    assert code == 1, message
    drifts = list(Drift.objects.filter(check_name="users").order_by("pk"))
    assert len(drifts) == 30
    assert {d.kind for d in drifts} == {"mismatch", "missing", "extra"}
    return drifts


def has_written(conn: psycopg.Connection[Any], pids: list[int]) -> bool:
    """Whether one of ``pids`` is in a transaction that has written something (it has an xid)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND backend_xid IS NOT NULL", [pids]
    ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize(
    ("broker_url", "point"),
    [("redis", "mid_apply"), ("redis", "before_record"), ("rabbitmq", "before_record")],
    indirect=["broker_url"],
)
def test_kill_9__mid_repair__redelivered_repairs_each_drift_once(
    broker_url: str, point: str, tmp_path: Path
) -> None:
    drifts = plant_user_drift()
    reviewer = get_user_model().objects.create_superuser("reviewer", "reviewer@corp.io", "pw")
    purge_broker()
    source, before = source_users(), target_users()
    assert source != before

    # mid_apply: the test locks the backend row of a mismatch in the middle of the plan, so the
    # worker stops inside the repair's transaction with earlier actions applied, uncommitted.
    # before_record: it locks one drift record, so the worker stops after the repair committed,
    # when the transaction that records it (drift status, repair log, admin history) locks them.
    if point == "mid_apply":
        middle = [d for d in drifts if d.kind == "mismatch"][10]
        lock, locked, blocked_query = "SELECT id FROM users WHERE id = %s FOR UPDATE", [middle.key], "UPDATE"
    else:
        lock, locked, blocked_query = (
            "SELECT id FROM consistency_drift WHERE id = %s FOR UPDATE",
            [str(drifts[15].pk)],
            "SELECT",
        )
    log = tmp_path / "worker.log"
    url = db_url("default")
    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as observer:
        assert len(holder.execute(lock, locked).fetchall()) == 1  # held until the rollback below
        first = start_worker_process(broker_url, visibility_timeout=2, log=log)
        try:
            repair_drifts.delay([d.pk for d in drifts], reviewer.pk)
            blocked = wait_until(lambda: waiting_on_lock(observer, blocked_query), what="the repair to block")
            assert not RepairLog.objects.exists()
            assert Drift.objects.filter(check_name="users", status="open").count() == 30
            if point == "mid_apply":
                assert has_written(observer, blocked)  # earlier actions applied in its transaction
                assert target_users() == before  # none of them committed
            else:
                assert target_users() == source  # the repair committed; nothing recorded yet
            kill_worker(first)
            assert first.returncode == -signal.SIGKILL
        finally:
            kill_worker(first)
            holder.rollback()
        wait_until(lambda: not alive(observer, blocked), what="the killed worker's sessions to end")
    assert not RepairLog.objects.exists()  # the killed worker recorded nothing
    assert Drift.objects.filter(check_name="users", status="open").count() == 30
    assert target_users() == (before if point == "mid_apply" else source)

    second = start_worker_process(broker_url, visibility_timeout=2, log=log)
    try:
        wait_until(
            lambda: not Drift.objects.filter(check_name="users", status="open").exists(),
            timeout=60,
            what="the redelivered repair",
        )
    finally:
        stop_worker_process(second)

    assert target_users() == source  # every row right, none twice, none left over
    # Each drift repaired and recorded once, with its admin history entry.
    assert set(Drift.objects.filter(check_name="users").values_list("status", flat=True)) == {"repaired"}
    logs = list(RepairLog.objects.values_list("drift_id", "executed", "verified", "performed_by_id"))
    assert sorted(logs) == sorted((d.pk, True, True, reviewer.pk) for d in drifts)
    history = LogEntry.objects.filter(change_message__startswith="Repaired (").values_list(
        "object_id", flat=True
    )
    assert sorted(str(h) for h in history) == sorted(str(d.pk) for d in drifts)
    assert "consistency.repair_drifts" in log.read_text()
    assert command("users")[0] == 0  # a fresh audit finds nothing


def test_acks_late_tasks_end_before_redis_would_hand_them_out_again() -> None:
    """Redis redelivers an unacked task after the visibility timeout, even to a live worker still
    running it: every acked-late task's hard time limit must end it first."""
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    late = {
        name: task for name, task in app.tasks.items() if name.startswith("consistency.") and task.acks_late
    }
    assert {"consistency.relay_outbox", "consistency.repair_drifts"} <= set(late)
    too_long = {
        name: task.time_limit for name, task in late.items() if not 0 < (task.time_limit or 0) < visibility
    }
    assert too_long == {}, f"time limits not under the {visibility} s visibility timeout"
