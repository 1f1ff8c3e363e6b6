"""The relay, with a real worker on the real broker: each sync case ends in the right backend state."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from celery.contrib.testing.worker import start_worker
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from consistency.auth_service.models import AuthSession, AuthUser, Outbox
from consistency.backend.models import User
from consistency.cachekeys import auth_session_key, auth_user_key, backend_user_key
from consistency.models import UserSyncState
from consistency.sync import auth_users, relay
from consistency.sync.cache import read_auth_session, read_auth_user, read_backend_user
from consistency.tasks import relay_outbox, sweep_outbox
from project.celery import app
from tests.sync.conftest import purge_broker, sync_db, using_broker, wait_until

pytestmark = sync_db


def backend(user_id: str) -> User | None:
    return User.objects.filter(pk=user_id).first()


def synced(user_id: str, **expected: object) -> bool:
    user = backend(user_id)
    return user is not None and all(getattr(user, k) == v for k, v in expected.items())


def test_relay__create_update_deactivate_reach_the_backend(worker: object) -> None:
    auth_users.create_user(email="Ada@Corp.io", user_id="u1", full_name="Ada", hashed_password="h1")
    wait_until(
        lambda: synced("u1", email="Ada@Corp.io", full_name="Ada", hashed_password="h1"), what="create"
    )

    auth_users.update_user("u1", full_name="Ada Lovelace")  # a partial update
    wait_until(lambda: synced("u1", full_name="Ada Lovelace", email="Ada@Corp.io"), what="update")

    auth_users.deactivate_user("u1")
    wait_until(lambda: synced("u1", is_active=False), what="deactivate")
    assert UserSyncState.objects.get(pk="u1").version == 3
    wait_until(lambda: relay.pending_count() == 0, what="outbox drained")


def _session(user_id: str, sid: str) -> AuthSession:
    return AuthSession.objects.create(
        id=sid, user_id=user_id, refresh_token_hash="x", expires_at=timezone.now() + dt.timedelta(days=1)
    )


@pytest.mark.parametrize("mode", ["delete", "deactivate"])
def test_relay__delete_cascades(worker: object, mode: str) -> None:
    auth_users.create_user(email="del@corp.io", user_id="u-del")
    wait_until(lambda: synced("u-del"), what="create")
    _session("u-del", "s1")
    # Fill the caches the delete must drop.
    assert read_backend_user("u-del") is not None
    assert read_auth_user("u-del") is not None
    assert read_auth_session("s1") is not None

    with override_settings(CONSISTENCY={"SETTLE_SECONDS": 0.0, "SYNC_DELETE": mode}):
        auth_users.delete_user("u-del")
        if mode == "delete":
            wait_until(lambda: backend("u-del") is None, what="backend delete")
        else:
            wait_until(lambda: synced("u-del", is_active=False), what="backend deactivate")
        wait_until(lambda: relay.pending_count() == 0, what="outbox drained")
    session = AuthSession.objects.get(pk="s1")
    assert (session.is_active, session.revoked_at is not None) == (False, True)
    cache = caches["default"]
    assert [
        cache.get(k) for k in (backend_user_key("u-del"), auth_user_key("u-del"), auth_session_key("s1"))
    ] == [
        None,
        None,
        None,
    ]


def test_relay__duplicate_and_out_of_order_events_end_in_the_same_state() -> None:
    """No worker: the relay is driven directly, so the order is chosen by the test."""
    auth_users.create_user(email="dup@corp.io", user_id="u-dup", full_name="v1")
    auth_users.update_user("u-dup", full_name="v2")
    create, update = Outbox.objects.filter(user_id="u-dup").order_by("version")

    # An update for a user not yet synced: applied first, it creates the user with its full state.
    assert relay.apply_event(update) is True
    assert synced("u-dup", full_name="v2", email="dup@corp.io")
    # The older create arrives late, then again (a duplicate): both ignored.
    assert relay.apply_event(create) is False
    assert relay.apply_event(create) is False
    assert relay.apply_event(update) is False
    assert synced("u-dup", full_name="v2")
    assert UserSyncState.objects.get(pk="u-dup").version == 2


def test_relay__broker_down_while_users_change_loses_nothing_the_sweep_relays_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Changes made while the broker is unreachable: each write commits, its trigger is lost; once
    the broker is back, a worker's sweep relays every change, once."""
    auth_users.create_user(email="down0@corp.io", user_id="u-down0")
    auth_users.create_user(email="down9@corp.io", user_id="u-down9")
    assert relay.relay_pending().applied == 2
    purge_broker()
    with using_broker("redis://127.0.0.1:1/0"):  # nothing listens there: the broker is down
        assert app.connection_for_write().port == 1
        for i in range(1, 5):
            auth_users.create_user(email=f"down{i}@corp.io", user_id=f"u-down{i}")
        auth_users.update_user("u-down0", full_name="changed while down")
        auth_users.delete_user("u-down9")
    assert relay.pending_count() == 6
    assert caplog.text.count("could not enqueue the outbox relay") == 6
    assert purge_broker() == 0  # no trigger reached the real broker
    assert set(User.objects.filter(pk__startswith="u-down").values_list("pk", flat=True)) == {
        "u-down0",
        "u-down9",
    }

    with start_worker(app, pool="solo", perform_ping_check=False):
        sweep_outbox.delay()
        wait_until(lambda: relay.pending_count() == 0, what="sweep")
    assert set(User.objects.filter(pk__startswith="u-down").values_list("pk", flat=True)) == {
        f"u-down{i}" for i in range(5)
    }
    assert synced("u-down0", full_name="changed while down")
    assert set(Outbox.objects.values_list("attempts", flat=True)) == {1}


def test_relay__two_concurrent_relays_never_process_one_event_twice() -> None:
    auth_users.bulk_create_users([AuthUser(id=f"u-c{i:03}", email=f"c{i}@corp.io") for i in range(200)])
    results: list[relay.RelayResult] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        try:
            results.append(relay.relay_pending(limit=20))
        finally:
            from django.db import connections

            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(r.claimed for r in results) == 200
    assert sum(r.applied for r in results) == 200
    assert set(Outbox.objects.values_list("attempts", flat=True)) == {1}
    assert User.objects.filter(pk__startswith="u-c").count() == 200


def test_relay__a_relay_dying_after_the_backend_commit_duplicates_nothing() -> None:
    for i in range(4):
        auth_users.create_user(email=f"k{i}@corp.io", user_id=f"u-k{i}", full_name=f"k{i}")

    # A relay that applies two events and dies before its claim commits.
    def relay_two_then_die() -> None:
        with transaction.atomic(using="auth"):
            claimed = list(Outbox.objects.select_for_update(skip_locked=True).order_by("id"))
            for event in claimed[:2]:
                relay.apply_event(event)
            raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError):
        relay_two_then_die()
    assert relay.pending_count() == 4
    result = relay.relay_pending()
    assert (result.applied, result.stale) == (2, 2)
    assert sorted(User.objects.filter(pk__startswith="u-k").values_list("full_name", flat=True)) == [
        "k0",
        "k1",
        "k2",
        "k3",
    ]
    assert relay.pending_count() == 0


def test_relay__emails_swapped_in_one_batch_conflict_then_apply_event_by_event() -> None:
    """Two users swap emails through a temporary one; the batch's upsert hits the unique email,
    so the batch is applied event by event, in the order auth committed the changes."""
    auth_users.create_user(email="x@corp.io", user_id="u-a")
    auth_users.create_user(email="y@corp.io", user_id="u-b")
    assert relay.relay_pending().applied == 2
    auth_users.update_user("u-a", email="tmp@corp.io")
    auth_users.update_user("u-b", email="x@corp.io")
    auth_users.update_user("u-a", email="y@corp.io")

    result = relay.relay_batch()
    assert (result.claimed, result.applied, result.failed) == (3, 3, 0)
    assert dict(User.objects.filter(pk__in=["u-a", "u-b"]).values_list("pk", "email")) == {
        "u-a": "y@corp.io",
        "u-b": "x@corp.io",
    }
    assert relay.pending_count() == 0


def test_relay__a_batch_keeps_each_users_newest_event() -> None:
    auth_users.create_user(email="n@corp.io", user_id="u-n", full_name="1")
    for name in ("2", "3", "4"):
        auth_users.update_user("u-n", full_name=name)
    auth_users.create_user(email="gone@corp.io", user_id="u-gone")
    auth_users.delete_user("u-gone")

    result = relay.relay_batch()
    assert (result.claimed, result.applied, result.stale) == (6, 2, 4)
    assert synced("u-n", full_name="4")
    assert backend("u-gone") is None
    assert dict(UserSyncState.objects.values_list("user_id", "version")) == {"u-n": 4, "u-gone": 2}


def test_relay__an_unknown_sync_delete_mode_is_refused_by_name_and_loses_nothing() -> None:
    auth_users.create_user(email="m@corp.io", user_id="u-m")
    assert relay.relay_pending().applied == 1
    auth_users.delete_user("u-m")
    refused = pytest.raises(ImproperlyConfigured, match=r"SYNC_DELETE.*'archive'.*'delete', 'deactivate'")
    with override_settings(CONSISTENCY={"SYNC_DELETE": "archive"}), refused:
        relay.relay_batch()
    assert relay.pending_count() == 1
    assert synced("u-m")


def test_relay__a_relay_that_finds_a_backlog_asks_one_more_worker_to_join() -> None:
    """One commit of many users triggers one task; its first batch comes back full, so it queues
    one more relay task (run here, no worker: the queued task stays in the broker to count)."""
    auth_users.bulk_create_users([AuthUser(id=f"u-bl{i:02}", email=f"bl{i}@corp.io") for i in range(12)])
    purge_broker()
    with override_settings(CONSISTENCY={"SYNC_BATCH_SIZE": 5}):
        assert relay_outbox.apply().get()["claimed"] == 12
        assert purge_broker() == 1  # the help request

        auth_users.create_user(email="single@corp.io", user_id="u-single")
        purge_broker()
        assert relay_outbox.apply().get()["claimed"] == 1
        assert purge_broker() == 0  # no backlog, no help asked
