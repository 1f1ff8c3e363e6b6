"""Apply outbox events to the backend: at least once, idempotent, ordered per user.

A batch claims up to ``SYNC_BATCH_SIZE`` pending events with ``SELECT ... FOR UPDATE
SKIP LOCKED`` in an auth transaction, so two workers never hold the same event and
each works on its own batch. Every event carries the user's full state, so a batch
keeps each user's newest event and applies them all in one backend transaction:
one upsert locks the users' ``UserSyncState`` rows (the last applied version), then
one bulk upsert and one delete write the users whose version moves forward; an event
whose version is not above the applied one changes nothing, so replays and
reordering are harmless. If the batch conflicts (an email another user still holds
until its own event applies), the batch is applied event by event and the failing
events stay pending. The claim commits (marking the events processed) only after
the backend commits: a worker killed in between leaves the events pending, and the
replay is a no-op.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connections, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from consistency.auth_service.models import AuthSession, Outbox, OutboxEvent
from consistency.backend.models import User
from consistency.cachekeys import auth_session_key, auth_user_key, backend_user_key
from consistency.models import UserSyncState
from consistency.sync.cache import invalidate_on_commit
from consistency.sync.conf import sync_setting
from consistency.sync.outbox import AUTH_ALIAS

logger = logging.getLogger("consistency.sync.relay")
BACKEND_ALIAS = "default"


@dataclass(frozen=True)
class RelayResult:
    """What one batch did: events claimed, applied, skipped as stale, failed (left pending)."""

    claimed: int = 0
    applied: int = 0
    stale: int = 0
    failed: int = 0


_SYNCED_USER_FIELDS = ("email", "full_name", "hashed_password", "is_active", "created_at", "updated_at")


def _user_fields(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "email": payload["email"],
        "full_name": payload["full_name"],
        "hashed_password": payload["hashed_password"],
        "is_active": payload["is_active"],
        "created_at": parse_datetime(payload["created_at"]),
        "updated_at": parse_datetime(payload["updated_at"]),
    }


def _apply_deletes(user_ids: list[str]) -> None:
    """``SYNC_DELETE``: remove the backend users, or deactivate them ("deactivate" keeps the row,
    is_active false, which the ``users`` check then reports as ``extra``: auth no longer has it)."""
    mode = sync_setting("SYNC_DELETE")  # checked when read (consistency.conf.RULES)
    users = User.objects.using(BACKEND_ALIAS).filter(pk__in=user_ids)
    if mode == "deactivate":
        users.update(is_active=False, updated_at=timezone.now())
    else:
        users.delete()


def apply_event(event: Outbox) -> bool:
    """Apply one event to the backend; False when a newer version was already applied."""
    with transaction.atomic(using=BACKEND_ALIAS):
        state, _ = (
            UserSyncState.objects.using(BACKEND_ALIAS)
            .select_for_update()
            .get_or_create(user_id=event.user_id, defaults={"version": 0})
        )
        if event.version <= state.version:
            return False
        if event.event == OutboxEvent.DELETED:
            _apply_deletes([event.user_id])
        else:
            User.objects.using(BACKEND_ALIAS).update_or_create(
                pk=event.user_id, defaults=_user_fields(event.payload)
            )
        state.version = event.version
        state.applied_at = timezone.now()
        state.save(using=BACKEND_ALIAS, update_fields=["version", "applied_at"])
        invalidate_on_commit([backend_user_key(event.user_id)], BACKEND_ALIAS)
    return True


def _coalesce(events: list[Outbox]) -> dict[str, Outbox]:
    """The newest event of each user in a batch: every event carries the user's full state."""
    newest: dict[str, Outbox] = {}
    for event in events:
        held = newest.get(event.user_id)
        if held is None or event.version > held.version:
            newest[event.user_id] = event
    return newest


def _is_postgres() -> bool:
    return connections[BACKEND_ALIAS].vendor == "postgresql"


def _lock_versions(user_ids: list[str], now: datetime.datetime) -> dict[str, int]:
    """Create or lock the users' sync-state rows, in user order; their applied versions."""
    user_ids = sorted(user_ids)
    table = UserSyncState._meta.db_table
    if _is_postgres():
        with connections[BACKEND_ALIAS].cursor() as cursor:
            # An existing row gets a no-op update: it takes the row lock and returns the version.
            cursor.execute(
                f"INSERT INTO {table} AS s (user_id, version, applied_at)"
                " SELECT u, 0, %s FROM jsonb_array_elements_text(%s::jsonb) AS u ORDER BY u"
                " ON CONFLICT (user_id) DO UPDATE SET version = s.version RETURNING s.user_id, s.version",
                [now, json.dumps(user_ids)],
            )
            return dict(cursor.fetchall())
    # Elsewhere (SQLite) one writer at a time holds the database: no row locks to take.
    states = UserSyncState.objects.using(BACKEND_ALIAS)
    states.bulk_create(
        [UserSyncState(user_id=uid, version=0, applied_at=now) for uid in user_ids], ignore_conflicts=True
    )
    return dict(states.filter(user_id__in=user_ids).values_list("user_id", "version"))


def _upsert_users(events: list[Outbox]) -> None:
    """Write the users' synced fields (in ``events`` order); other columns keep their values."""
    if not _is_postgres():
        User.objects.using(BACKEND_ALIAS).bulk_create(
            [User(id=e.user_id, **_user_fields(e.payload)) for e in events],
            update_conflicts=True,
            unique_fields=["id"],
            update_fields=list(_SYNCED_USER_FIELDS),
        )
        return
    # One JSON parameter for the rows (binding thousands of values one by one costs more than
    # the insert); the columns the backend owns get their model defaults on insert.
    connection = connections[BACKEND_ALIAS]
    synced = ("id", *_SYNCED_USER_FIELDS)
    blank = User(id="")
    quoted = {f.attname: connection.ops.quote_name(str(f.column)) for f in User._meta.concrete_fields}
    values: list[str] = []
    params: list[Any] = []
    for field in User._meta.concrete_fields:
        if field.attname in synced:
            values.append(f"x.{quoted[field.attname]}")
        else:
            values.append("%s")
            params.append(field.get_db_prep_save(getattr(blank, field.attname), connection))
    types = {f.attname: f.db_type(connection) for f in User._meta.concrete_fields}
    record = ", ".join(f"{quoted[name]} {types[name]}" for name in synced)
    updates = ", ".join(f"{quoted[name]} = EXCLUDED.{quoted[name]}" for name in _SYNCED_USER_FIELDS)
    rows = [{**e.payload, "id": e.user_id, "ord": n} for n, e in enumerate(events)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {connection.ops.quote_name(User._meta.db_table)} ({', '.join(quoted.values())})"
            f" SELECT {', '.join(values)} FROM jsonb_to_recordset(%s::jsonb) AS x({record}, ord int)"
            f" ORDER BY x.ord ON CONFLICT (id) DO UPDATE SET {updates}",
            [*params, json.dumps(rows)],
        )


def _advance_versions(events: list[Outbox], now: datetime.datetime) -> None:
    """Record each event's version as the user's applied one (rows locked by ``_lock_versions``)."""
    if _is_postgres():
        with connections[BACKEND_ALIAS].cursor() as cursor:
            cursor.execute(
                f"UPDATE {UserSyncState._meta.db_table} AS s SET version = x.version, applied_at = %s"
                " FROM jsonb_to_recordset(%s::jsonb) AS x(user_id text, version bigint)"
                " WHERE s.user_id = x.user_id",
                [now, json.dumps([{"user_id": e.user_id, "version": e.version} for e in events])],
            )
        return
    UserSyncState.objects.using(BACKEND_ALIAS).bulk_create(
        [UserSyncState(user_id=e.user_id, version=e.version, applied_at=now) for e in events],
        update_conflicts=True,
        unique_fields=["user_id"],
        update_fields=["version", "applied_at"],
    )


def apply_batch(events: list[Outbox]) -> int:
    """Apply a batch to the backend in one transaction; the number of users it changed.

    The sync-state rows of the batch's users are created or locked by one upsert, in user
    order (two relays holding events of the same users wait for each other, never deadlock);
    the users whose newest event in the batch is above their applied version are then written:
    one delete first (it frees emails), then one bulk upsert in event order (an email freed by
    one user and taken by another moves in the order auth committed it); their versions advance.
    Raises a ``DatabaseError`` (nothing applied) when a row conflicts; the caller then goes
    event by event.
    """
    newest = _coalesce(events)
    now = timezone.now()
    with transaction.atomic(using=BACKEND_ALIAS):
        applied_versions = _lock_versions(list(newest), now)
        due = sorted(
            (e for uid, e in newest.items() if e.version > applied_versions[uid]), key=lambda e: e.pk
        )
        if not due:
            return 0
        deleted = [e.user_id for e in due if e.event == OutboxEvent.DELETED]
        if deleted:
            _apply_deletes(deleted)
        saved = [e for e in due if e.event != OutboxEvent.DELETED]
        if saved:
            _upsert_users(saved)
        _advance_versions(due, now)
        invalidate_on_commit([backend_user_key(e.user_id) for e in due], BACKEND_ALIAS)
    return len(due)


def _revoke_sessions_of(deletes: list[Outbox]) -> None:
    """Revoke the sessions the deleted users opened before their delete (in the claim transaction)."""
    if not deletes:
        return
    deleted_at: dict[str, Any] = {}
    for event in deletes:
        deleted_at[event.user_id] = max(event.created_at, deleted_at.get(event.user_id, event.created_at))
    sessions = AuthSession.objects.using(AUTH_ALIAS).filter(user_id__in=list(deleted_at), is_active=True)
    ids = [
        pk
        for pk, uid, created in sessions.values_list("pk", "user_id", "created_at")
        if created <= deleted_at[uid]
    ]
    if ids:
        AuthSession.objects.using(AUTH_ALIAS).filter(pk__in=ids).update(
            is_active=False, revoked_at=timezone.now()
        )
    keys = [*(auth_user_key(uid) for uid in deleted_at), *(auth_session_key(pk) for pk in ids)]
    invalidate_on_commit(keys, AUTH_ALIAS)


def _apply_one_by_one(events: list[Outbox]) -> tuple[list[Outbox], int, int]:
    """The fallback after a batch conflict: each event in its own transaction, in order."""
    done: list[Outbox] = []
    applied = failed = 0
    for event in events:
        try:
            applied += apply_event(event)
        except DatabaseError as exc:
            # e.g. an email another user still holds until its own event applies: retry later.
            failed += 1
            logger.warning("outbox event %s (%s) failed: %s", event.pk, event.event, type(exc).__name__)
            Outbox.objects.using(AUTH_ALIAS).filter(pk=event.pk).update(
                attempts=F("attempts") + 1, last_error=type(exc).__name__
            )
            continue
        done.append(event)
    return done, applied, failed


def relay_batch(limit: int | None = None) -> RelayResult:
    """Claim up to ``limit`` pending events (oldest first), apply them, mark them processed.

    ``applied`` counts the users changed in the backend; ``stale`` the events that changed
    nothing (an equal or newer version was applied already, or comes later in the same batch).
    """
    limit = int(limit or sync_setting("SYNC_BATCH_SIZE"))
    with transaction.atomic(using=AUTH_ALIAS):
        events = list(
            Outbox.objects.using(AUTH_ALIAS)
            .select_for_update(skip_locked=True)
            .filter(processed_at__isnull=True)
            .order_by("id")[:limit]
        )
        if not events:
            return RelayResult()
        failed = 0
        try:
            applied = apply_batch(events)
            done = events
        except DatabaseError as exc:
            logger.info(
                "relay batch of %d conflicted (%s); applying event by event", len(events), type(exc).__name__
            )
            done, applied, failed = _apply_one_by_one(events)
        _revoke_sessions_of([e for e in done if e.event == OutboxEvent.DELETED])
        Outbox.objects.using(AUTH_ALIAS).filter(pk__in=[e.pk for e in done]).update(
            processed_at=timezone.now(), attempts=F("attempts") + 1
        )
    return RelayResult(claimed=len(events), applied=applied, stale=len(done) - applied, failed=failed)


def relay_pending(
    limit: int | None = None, max_batches: int = 100, on_backlog: Callable[[], None] | None = None
) -> RelayResult:
    """Relay batches until nothing is pending (or only failing events are left).

    ``on_backlog`` is called once if the first batch comes back full: more events wait than one
    batch holds, so the caller may ask another worker to join (batches never overlap).
    """
    limit = int(limit or sync_setting("SYNC_BATCH_SIZE"))
    total = RelayResult()
    for number in range(max_batches):
        batch = relay_batch(limit)
        if number == 0 and on_backlog is not None and batch.claimed >= limit:
            on_backlog()
        total = RelayResult(
            claimed=total.claimed + batch.claimed,
            applied=total.applied + batch.applied,
            stale=total.stale + batch.stale,
            failed=total.failed + batch.failed,
        )
        if batch.applied + batch.stale == 0:  # empty, or nothing but failures
            break
    return total


def pending_count() -> int:
    """Events not yet relayed."""
    return Outbox.objects.using(AUTH_ALIAS).filter(processed_at__isnull=True).count()
