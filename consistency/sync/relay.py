"""Apply outbox events to the backend: at least once, idempotent, ordered per user.

A batch claims pending events with ``SELECT ... FOR UPDATE SKIP LOCKED`` in an
auth transaction, so two workers never hold the same event. Each event is applied
in its own backend transaction that first locks the user's ``UserSyncState``; an
event whose version is not above the last applied one is skipped, so replays and
reordering are harmless and every event carries the user's full state. The claim
commits (marking the events processed) only after the backend commits: a worker
killed in between leaves the events pending, and the replay is a no-op.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, transaction
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


def _user_fields(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "email": payload["email"],
        "full_name": payload["full_name"],
        "hashed_password": payload["hashed_password"],
        "is_active": payload["is_active"],
        "created_at": parse_datetime(payload["created_at"]),
        "updated_at": parse_datetime(payload["updated_at"]),
    }


def _apply_delete(user_id: str) -> None:
    if sync_setting("SYNC_DELETE") == "deactivate":
        User.objects.using(BACKEND_ALIAS).filter(pk=user_id).update(
            is_active=False, updated_at=timezone.now()
        )
    else:
        User.objects.using(BACKEND_ALIAS).filter(pk=user_id).delete()


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
            _apply_delete(event.user_id)
        else:
            User.objects.using(BACKEND_ALIAS).update_or_create(
                pk=event.user_id, defaults=_user_fields(event.payload)
            )
        state.version = event.version
        state.applied_at = timezone.now()
        state.save(using=BACKEND_ALIAS, update_fields=["version", "applied_at"])
        invalidate_on_commit([backend_user_key(event.user_id)], BACKEND_ALIAS)
    return True


def _revoke_sessions(event: Outbox) -> None:
    """Revoke the deleted user's sessions opened before the delete (inside the claim transaction)."""
    sessions = AuthSession.objects.using(AUTH_ALIAS).filter(
        user_id=event.user_id, is_active=True, created_at__lte=event.created_at
    )
    ids = list(sessions.values_list("pk", flat=True))
    sessions.filter(pk__in=ids).update(is_active=False, revoked_at=timezone.now())
    keys = [auth_user_key(event.user_id), *(auth_session_key(pk) for pk in ids)]
    invalidate_on_commit(keys, AUTH_ALIAS)


def relay_batch(limit: int | None = None) -> RelayResult:
    """Claim up to ``limit`` pending events (oldest first), apply them, mark them processed."""
    limit = int(limit or sync_setting("SYNC_BATCH_SIZE"))
    applied = stale = failed = 0
    with transaction.atomic(using=AUTH_ALIAS):
        events = list(
            Outbox.objects.using(AUTH_ALIAS)
            .select_for_update(skip_locked=True)
            .filter(processed_at__isnull=True)
            .order_by("id")[:limit]
        )
        done: list[int] = []
        for event in events:
            try:
                if apply_event(event):
                    applied += 1
                else:
                    stale += 1
            except DatabaseError as exc:
                # e.g. an email another user still holds until its own event applies: retry later.
                failed += 1
                logger.warning("outbox event %s (%s) failed: %s", event.pk, event.event, type(exc).__name__)
                Outbox.objects.using(AUTH_ALIAS).filter(pk=event.pk).update(
                    attempts=F("attempts") + 1, last_error=type(exc).__name__
                )
                continue
            if event.event == OutboxEvent.DELETED:
                _revoke_sessions(event)
            done.append(event.pk)
        Outbox.objects.using(AUTH_ALIAS).filter(pk__in=done).update(
            processed_at=timezone.now(), attempts=F("attempts") + 1
        )
    return RelayResult(claimed=len(events), applied=applied, stale=stale, failed=failed)


def relay_pending(limit: int | None = None, max_batches: int = 100) -> RelayResult:
    """Relay batches until nothing is pending (or only failing events are left)."""
    total = RelayResult()
    for _ in range(max_batches):
        batch = relay_batch(limit)
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
