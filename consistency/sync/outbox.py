"""Write auth-user changes to the outbox, in the transaction that makes them.

Each event carries the next per-user version (a counter row upserted in the same
transaction, so two writers of one user get distinct, increasing versions) and the
user's state after the change. After the transaction commits, a relay is triggered;
if the trigger is lost (broker down), the periodic sweep relays the event.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.db import connections, transaction

from consistency.auth_service.models import AuthUser, Outbox, OutboxEvent
from consistency.cachekeys import json_value

logger = logging.getLogger("consistency.sync.outbox")

AUTH_ALIAS = "auth"
# The user's fields the backend copies; hashed_password included, so payloads are never logged.
SYNCED_FIELDS = ("id", "email", "full_name", "hashed_password", "is_active", "created_at", "updated_at")

_NEXT_VERSION_SQL = """
INSERT INTO auth_outbox_versions (user_id, version) VALUES (%s, 1)
ON CONFLICT (user_id) DO UPDATE SET version = auth_outbox_versions.version + 1
RETURNING version
"""


def user_snapshot(user: AuthUser) -> dict[str, Any]:
    """The state an event carries: the synced fields, JSON-ready."""
    return {name: json_value(getattr(user, name)) for name in SYNCED_FIELDS}


def next_version(user_id: str, using: str = AUTH_ALIAS) -> int:
    """The next version for ``user_id``; call inside the transaction that writes the event."""
    with connections[using].cursor() as cursor:
        cursor.execute(_NEXT_VERSION_SQL, [user_id])
        return int(cursor.fetchone()[0])


def event_for(user: AuthUser, *, created: bool) -> str:
    """The event name for a saved user."""
    if created:
        return OutboxEvent.CREATED
    return OutboxEvent.UPDATED if user.is_active else OutboxEvent.DEACTIVATED


def record(changes: Iterable[tuple[str, str, dict[str, Any]]], using: str = AUTH_ALIAS) -> list[Outbox]:
    """Write one event per ``(user_id, event, payload)`` and trigger a relay after commit."""
    with transaction.atomic(using=using):
        rows = [
            Outbox(user_id=user_id, event=event, payload=payload, version=next_version(user_id, using))
            for user_id, event, payload in changes
        ]
        Outbox.objects.using(using).bulk_create(rows)
        if rows:
            transaction.on_commit(trigger_relay, using=using)
    return rows


def record_saved(users: Iterable[AuthUser], *, created: bool, using: str = AUTH_ALIAS) -> list[Outbox]:
    """Events for users just created or updated (signals call it per save; bulk helpers per batch)."""
    return record(((u.pk, event_for(u, created=created), user_snapshot(u)) for u in users), using)


def record_deleted(user_ids: Iterable[str], using: str = AUTH_ALIAS) -> list[Outbox]:
    """Delete events for ``user_ids``."""
    return record(((pk, OutboxEvent.DELETED, {}) for pk in user_ids), using)


def trigger_relay() -> None:
    """Ask a worker to relay now; a failure only delays the event until the next sweep."""
    from consistency.tasks import relay_outbox

    try:
        relay_outbox.apply_async(retry=False)
    except Exception as exc:  # the broker is down: the sweep relays it later
        logger.warning("could not enqueue the outbox relay (%s); the sweep will relay it", type(exc).__name__)
