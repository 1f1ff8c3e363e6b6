"""Route each app to its own database.

The mirrored auth service lives only on the ``auth`` alias; every other app
(the backend mirror, this app's own tables, Django's and Celery beat's) lives
only on ``default``. ``allow_migrate`` enforces it, so ``migrate --database auth``
creates the auth tables and nothing else.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model

AUTH_APPS = frozenset({"auth_service"})
AUTH_ALIAS = "auth"
DEFAULT_ALIAS = "default"


def database_for_app(app_label: str) -> str:
    """The alias that holds ``app_label``'s tables."""
    return AUTH_ALIAS if app_label in AUTH_APPS else DEFAULT_ALIAS


class ServiceRouter:
    """Database router for the two services."""

    def db_for_read(self, model: type[Model], **hints: Any) -> str:
        return database_for_app(model._meta.app_label)

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        return database_for_app(model._meta.app_label)

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        same = database_for_app(obj1._meta.app_label) == database_for_app(obj2._meta.app_label)
        return True if same else None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool:
        return db == database_for_app(app_label)
