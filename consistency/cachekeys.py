"""The cache's keys and payloads: one definition for the services' cached entities.

The services cache four entities under ``auth:session:{id}``, ``auth:user:{id}``,
``backend:user:{id}`` and ``backend:thread:{id}``. The seed, the sync code and
the cache-parity audit all build keys and payloads here, so they agree on what
a fresh entry looks like. Payloads are JSON-serialisable dicts (datetimes as
ISO-8601 UTC strings) and never carry a secret field.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Model

from consistency.auth_service.models import AuthSession, AuthUser
from consistency.backend.models import Thread, User
from consistency.conf import app_settings

# Fields no payload may carry; tests and the audit check payloads against it.
SECRET_FIELDS = frozenset(
    {"hashed_password", "refresh_token_hash", "token_hash", "encrypted_value", "provider_data"}
)

AUTH_USER_FIELDS = (
    "id",
    "email",
    "full_name",
    "auth_provider",
    "is_active",
    "is_verified",
    "created_at",
    "updated_at",
    "last_login_at",
)
BACKEND_USER_FIELDS = (
    "id",
    "email",
    "full_name",
    "is_active",
    "is_superuser",
    "is_developer",
    "role",
    "permissions",
    "plan_tier",
    "plan_started_at",
    "plan_expires_at",
    "feature_flags",
    "created_at",
    "updated_at",
)
THREAD_FIELDS = ("id", "object", "created_at", "user_id", "metadata")
SESSION_FIELDS = (
    "id",
    "user_id",
    "ip_address",
    "user_agent",
    "device_id",
    "created_at",
    "expires_at",
    "last_activity",
    "is_active",
    "revoked_at",
)


def auth_session_key(session_id: object) -> str:
    return f"auth:session:{session_id}"


def auth_user_key(user_id: object) -> str:
    return f"auth:user:{user_id}"


def backend_user_key(user_id: object) -> str:
    return f"backend:user:{user_id}"


def backend_thread_key(thread_id: object) -> str:
    return f"backend:thread:{thread_id}"


def json_value(value: Any) -> Any:
    """``value`` as the cache stores it: aware datetimes become ISO-8601 UTC strings."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            # Django stores naive datetimes as UTC when USE_TZ is on.
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _payload(obj: object, fields: Iterable[str]) -> dict[str, Any]:
    return {name: json_value(getattr(obj, name)) for name in fields}


def auth_user_payload(user: object) -> dict[str, Any]:
    """What the auth service caches for an account (no password hash, no provider data)."""
    return _payload(user, AUTH_USER_FIELDS)


def backend_user_payload(user: object) -> dict[str, Any]:
    """What the backend caches for a user (no password hash)."""
    return _payload(user, BACKEND_USER_FIELDS)


def thread_payload(thread: object) -> dict[str, Any]:
    """What the backend caches for a thread."""
    return _payload(thread, THREAD_FIELDS)


def session_payload(session: object) -> dict[str, Any]:
    """What the auth service caches for a session (no refresh token hash)."""
    return _payload(session, SESSION_FIELDS)


@dataclass(frozen=True)
class CachedEntity:
    """One kind of cache entry: its key prefix, the row it caches and how."""

    name: str
    prefix: str
    model: type[Model]
    alias: str
    key: Callable[[object], str]
    payload: Callable[[object], dict[str, Any]]

    @property
    def ttl(self) -> int:
        """Seconds an entry lives; read on use so a test's override applies."""
        return int(app_settings.CACHE_TTL)

    @property
    def pattern(self) -> str:
        return f"{self.prefix}*"

    def id_of(self, key: str) -> str:
        """The row id in ``key``; refuses a key of another entity."""
        if not key.startswith(self.prefix):
            raise ValueError(f"cache key {key!r} does not start with {self.prefix!r}")
        return key[len(self.prefix) :]


CACHED_ENTITIES: tuple[CachedEntity, ...] = (
    CachedEntity("auth_session", "auth:session:", AuthSession, "auth", auth_session_key, session_payload),
    CachedEntity("auth_user", "auth:user:", AuthUser, "auth", auth_user_key, auth_user_payload),
    CachedEntity("backend_user", "backend:user:", User, "default", backend_user_key, backend_user_payload),
    CachedEntity("backend_thread", "backend:thread:", Thread, "default", backend_thread_key, thread_payload),
)


def cached_entity(name: str) -> CachedEntity:
    """The entity called ``name`` (e.g. ``"auth_user"``)."""
    for entity in CACHED_ENTITIES:
        if entity.name == name:
            return entity
    known = ", ".join(e.name for e in CACHED_ENTITIES)
    raise KeyError(f"unknown cached entity {name!r}; known: {known}")
