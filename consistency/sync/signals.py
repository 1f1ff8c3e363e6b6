"""Signal receivers: outbox events for auth-user saves and deletes, cache invalidation after commit.

Signals miss ``QuerySet.update()``, ``bulk_create()``/``bulk_update()`` and raw SQL;
those paths use the helpers in ``auth_users`` or call ``cache.invalidate_rows``.
Connected from ``ConsistencyConfig.ready()``.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.signals import post_delete, post_save

from consistency.auth_service.models import AuthUser
from consistency.backend.models import Message, ToolUsageLog
from consistency.cachekeys import CACHED_ENTITIES
from consistency.sync import analytics, outbox
from consistency.sync.cache import invalidate_on_commit


def user_saved(sender: type[AuthUser], instance: AuthUser, created: bool, using: str, **kwargs: Any) -> None:
    """Write the save's event; ``AuthUser.save`` runs in a transaction, so it commits with the row."""
    if kwargs.get("raw"):
        return  # fixtures (loaddata) write rows as they are
    outbox.record_saved([instance], created=created, using=using)


def user_deleted(sender: type[AuthUser], instance: AuthUser, using: str, **kwargs: Any) -> None:
    """Write the delete's event (the collector deletes inside a transaction)."""
    outbox.record_deleted([instance.pk], using=using)


def row_changed(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    """Drop the row's cache entry once its transaction commits."""
    for entity in CACHED_ENTITIES:
        if entity.model is sender:
            invalidate_on_commit([entity.key(instance.pk)], using)


def message_changed(sender: type[Message], instance: Message, **kwargs: Any) -> None:
    """Queue the message's analytics event (``deleted`` when the signal is post_delete)."""
    analytics.record_messages([instance], deleted=kwargs["signal"] is post_delete)


def tool_usage_changed(sender: type[ToolUsageLog], instance: ToolUsageLog, **kwargs: Any) -> None:
    """Queue the tool-usage log's analytics event."""
    analytics.record_tool_usage([instance], deleted=kwargs["signal"] is post_delete)


def connect() -> None:
    """Connect the receivers (idempotent: dispatch_uid)."""
    post_save.connect(user_saved, sender=AuthUser, dispatch_uid="consistency.sync.user_saved")
    post_delete.connect(user_deleted, sender=AuthUser, dispatch_uid="consistency.sync.user_deleted")
    for entity in CACHED_ENTITIES:
        uid = f"consistency.sync.cache.{entity.name}"
        post_save.connect(row_changed, sender=entity.model, dispatch_uid=f"{uid}.save")
        post_delete.connect(row_changed, sender=entity.model, dispatch_uid=f"{uid}.delete")
    for model, receiver in ((Message, message_changed), (ToolUsageLog, tool_usage_changed)):
        uid = f"consistency.sync.analytics.{model.__name__}"
        post_save.connect(receiver, sender=model, dispatch_uid=f"{uid}.save")
        post_delete.connect(receiver, sender=model, dispatch_uid=f"{uid}.delete")
