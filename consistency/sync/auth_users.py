"""The auth-user service layer: every change writes its outbox event in the same transaction.

Tests, the admin and commands change auth users through these functions. ORM
``save()`` and ``delete()`` are covered by signals (``consistency.sync.signals``);
``QuerySet.update()`` and ``bulk_create()`` send no signal, so their helpers here
write the events themselves. Raw SQL must call ``outbox.record_*`` itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from consistency.auth_service.models import AuthUser
from consistency.sync import outbox
from consistency.sync.cache import invalidate_rows
from consistency.sync.outbox import AUTH_ALIAS


def create_user(*, email: str, user_id: str | None = None, **fields: Any) -> AuthUser:
    """Create an auth user; the post_save signal writes its ``created`` event."""
    with transaction.atomic(using=AUTH_ALIAS):
        user = AuthUser(id=user_id or str(uuid.uuid4()), email=email, **fields)
        user.save(using=AUTH_ALIAS, force_insert=True)
    return user


def update_user(user_id: str, **fields: Any) -> AuthUser:
    """Change ``fields`` of a user (a partial update); writes an ``updated`` event."""
    with transaction.atomic(using=AUTH_ALIAS):
        user = AuthUser.objects.using(AUTH_ALIAS).select_for_update().get(pk=user_id)
        for name, value in fields.items():
            setattr(user, name, value)
        user.updated_at = timezone.now()
        user.save(using=AUTH_ALIAS, update_fields=[*fields, "updated_at"])
    return user


def deactivate_user(user_id: str) -> AuthUser:
    """Deactivate a user; writes a ``deactivated`` event."""
    return update_user(user_id, is_active=False)


def delete_user(user_id: str) -> bool:
    """Delete a user; the post_delete signal writes the ``deleted`` event. False if absent."""
    with transaction.atomic(using=AUTH_ALIAS):
        deleted, _ = AuthUser.objects.using(AUTH_ALIAS).filter(pk=user_id).delete()
    return deleted > 0


def bulk_create_users(users: Sequence[AuthUser], batch_size: int = 1000) -> list[AuthUser]:
    """``bulk_create`` (no signals) plus one ``created`` event per user, in one transaction."""
    with transaction.atomic(using=AUTH_ALIAS):
        created = AuthUser.objects.using(AUTH_ALIAS).bulk_create(users, batch_size=batch_size)
        outbox.record_saved(created, created=True)
        invalidate_rows(AuthUser, [u.pk for u in created], AUTH_ALIAS)
    return created


def bulk_update_users(queryset: QuerySet[AuthUser], **fields: Any) -> int:
    """``queryset.update(**fields)`` (no signals) plus one event per changed user."""
    with transaction.atomic(using=AUTH_ALIAS):
        locked = queryset.using(AUTH_ALIAS).select_for_update()
        pks = list(locked.values_list("pk", flat=True))
        count = (
            AuthUser.objects.using(AUTH_ALIAS).filter(pk__in=pks).update(**fields, updated_at=timezone.now())
        )
        changed = list(AuthUser.objects.using(AUTH_ALIAS).filter(pk__in=pks).order_by("pk"))
        outbox.record_saved(changed, created=False)
        invalidate_rows(AuthUser, pks, AUTH_ALIAS)
    return count


def bulk_delete_users(queryset: QuerySet[AuthUser]) -> int:
    """Delete many users; ``QuerySet.delete()`` sends post_delete per row, so signals record them."""
    with transaction.atomic(using=AUTH_ALIAS):
        deleted, _ = queryset.using(AUTH_ALIAS).delete()
    return deleted
