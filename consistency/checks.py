"""System checks: ``consistency.E0NN`` errors and ``consistency.W0NN`` warnings.

Checks that open connections (``Tags.database``) run only when ``databases`` is
given (``check --database ALIAS``, and ``migrate``, which passes its own alias).
Because ``migrate`` runs them too, what ``migrate`` or ``initstores`` repairs is a
warning, never an error: an error would stop the very command that fixes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import DatabaseError, connections, router
from django.db.migrations.executor import MigrationExecutor

from consistency.conf import app_settings
from consistency.engine.declarations import DeclarationError
from consistency.engine.registry import registry
from consistency.schema import parity as schema_parity
from consistency.stores.errors import StoreError
from project.routers import AUTH_ALIAS, DEFAULT_ALIAS, database_for_app

DATABASE_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
REDIS_CACHE = "django_redis.cache.RedisCache"
WELL_KNOWN_PASSWORDS = frozenset(
    {
        "",
        "postgres",
        "password",
        "admin",
        "root",
        "changeme",
        "secret",
        "guest",
        "default",
        "redis",
        "clickhouse",
    }
)
LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1", "[::1]"})


@register(Tags.models)
def check_parity_declarations(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """consistency.E001: every parity declaration resolves to models, fields and aliases."""
    errors: list[CheckMessage] = []
    for decl in registry:
        try:
            decl.validate()
        except DeclarationError as exc:
            errors.append(
                Error(
                    f"Invalid parity declaration: {exc}",
                    hint="Fix the declaration in its app's parity.py: names must match the models' fields, "
                    "aliases must be in DATABASES, and keys must be unique.",
                    obj=decl.name,
                    id="consistency.E001",
                )
            )
    return errors


@register(Tags.models)
def check_database_routing(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """consistency.E002: both aliases exist, and the routers send every model to its service's alias."""
    missing = [alias for alias in (DEFAULT_ALIAS, AUTH_ALIAS) if alias not in settings.DATABASES]
    errors: list[CheckMessage] = [
        Error(
            f"Database alias {alias!r} is missing from DATABASES; the router keeps "
            f"{'the auth service' if alias == AUTH_ALIAS else 'the backend and this app'} there.",
            hint=f"Set {'AUTH_DATABASE_URL' if alias == AUTH_ALIAS else 'DATABASE_URL'} or add {alias!r} to DATABASES.",
            id="consistency.E002",
        )
        for alias in missing
    ]
    if missing:
        return errors
    for model in apps.get_models():
        home = database_for_app(model._meta.app_label)
        routed = {router.db_for_read(model), router.db_for_write(model)}
        if routed != {home} or not router.allow_migrate_model(home, model):
            errors.append(
                Error(
                    f"{model._meta.label} is routed to {sorted(str(a) for a in routed)}, not to its database {home!r}.",
                    hint="Put project.routers.ServiceRouter in DATABASE_ROUTERS, ahead of any router "
                    "that claims this app.",
                    obj=model,
                    id="consistency.E002",
                )
            )
    return errors


@register(Tags.caches)
def check_cache_backend(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """consistency.E003: declarations that audit Redis need the django-redis cache."""
    needing = [decl.name for decl in registry if decl.store == "redis"]
    backend = settings.CACHES.get("default", {}).get("BACKEND", "")
    if not needing or backend == REDIS_CACHE:
        return []
    return [
        Error(
            f"The default cache is {backend!r}, but {', '.join(needing)} audit Redis through django-redis.",
            hint=f"Set REDIS_URL (CACHES['default']['BACKEND'] = {REDIS_CACHE!r}).",
            obj="CACHES",
            id="consistency.E003",
        )
    ]


@register()
def check_app_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """consistency.E004: every key of ``CONSISTENCY`` is one this app reads, with a usable value."""
    from consistency.conf import problems

    return [
        Error(
            msg,
            hint="The CONSISTENCY table in the README lists each key.",
            obj="CONSISTENCY",
            id="consistency.E004",
        )
        for msg in problems()
    ]


@register(Tags.compatibility)
def check_beat_scheduler(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """consistency.W001: scheduled audits need Celery beat's database scheduler."""
    scheduler = getattr(settings, "CELERY_BEAT_SCHEDULER", None)
    if not app_settings.SCHEDULED_AUDITS or scheduler == DATABASE_SCHEDULER:
        return []
    return [
        Warning(
            f"CELERY_BEAT_SCHEDULER is {scheduler!r} while CONSISTENCY['SCHEDULED_AUDITS'] is on: "
            "audit schedules kept in the database will not run.",
            hint=f"Set CELERY_BEAT_SCHEDULER = {DATABASE_SCHEDULER!r}, or SCHEDULED_AUDITS to False.",
            id="consistency.W001",
        )
    ]


@register(Tags.security, deploy=True)
def check_deploy_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """consistency.W002-W004: DEBUG off, a secret key of your own, no default credentials."""
    from project.settings import _DEV_SECRET

    found: list[CheckMessage] = []
    if settings.DEBUG:
        found.append(
            Warning(
                "DEBUG is on.", hint="Unset DEBUG or set DEBUG=false in production.", id="consistency.W002"
            )
        )
    if settings.SECRET_KEY == _DEV_SECRET:
        found.append(
            Warning(
                "SECRET_KEY is the development default shipped in project/settings.py.",
                hint="Set SECRET_KEY to a long random value of your own.",
                id="consistency.W003",
            )
        )
    for where, user, password, host in _credentials():
        if host.strip("[]").lower() in LOCAL_HOSTS or host.startswith("/"):
            continue
        if password is None or password in WELL_KNOWN_PASSWORDS:
            shown = "no password" if not password else "a well-known default password"
            found.append(
                Warning(
                    f"{where} connects to {host} as {user or '(no user)'} with {shown}.",
                    hint=f"Give the account on {host} a strong password and put it in {where}.",
                    id="consistency.W004",
                )
            )
    return found


def _credentials() -> Iterable[tuple[str, str, str | None, str]]:
    """(setting, user, password, host) for every store the settings name."""
    for alias, db in settings.DATABASES.items():
        if "sqlite" not in str(db.get("ENGINE", "")):
            password = str(db.get("PASSWORD") or "") or None
            yield f"DATABASES[{alias!r}]", str(db.get("USER") or ""), password, str(db.get("HOST") or "")
    location = settings.CACHES.get("default", {}).get("LOCATION")
    urls = {
        "REDIS_URL": location if isinstance(location, str) and "://" in location else None,
        "CLICKHOUSE_URL": getattr(settings, "CLICKHOUSE_URL", None),
        "MILVUS_URI": getattr(settings, "MILVUS_URI", None),
        "CELERY_BROKER_URL": getattr(settings, "CELERY_BROKER_URL", None),
    }
    for name, url in urls.items():
        if not url or "://" not in url or url.startswith(("chdb:", "memory:", "unix:")):
            continue
        parts = urlsplit(url)
        yield name, parts.username or "", parts.password, parts.hostname or ""


@register(Tags.database)
def check_unapplied_migrations(
    app_configs: Any = None, databases: Iterable[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """consistency.W005: migrations not applied on a database named by ``check --database``."""
    found: list[CheckMessage] = []
    for alias in databases or ():
        try:
            executor = MigrationExecutor(connections[alias])
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        except DatabaseError as exc:
            found.append(_unreachable(f"database {alias!r}", exc, "consistency.W005"))
            continue
        if plan:
            names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in plan[:5]) + (
                ", ..." if len(plan) > 5 else ""
            )
            found.append(
                Warning(
                    f"{len(plan)} migration(s) not applied on database {alias!r}: {names}.",
                    hint=f"Run: python manage.py migrate --database {alias}",
                    id="consistency.W005",
                )
            )
    return found


@register(Tags.database)
def check_analytics_schema(
    app_configs: Any = None, databases: Iterable[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """consistency.W006: the ClickHouse schema is at its latest version."""
    if not databases:
        return []
    from consistency.stores.analytics import get_analytics
    from consistency.stores.analytics_versions import LATEST, current_version

    try:
        store = get_analytics()
        version = current_version(store)
    except (StoreError, ValueError) as exc:
        return [_unreachable("the analytics store", exc, "consistency.W006")]
    if version >= LATEST:
        return []
    return [
        Warning(
            f"The analytics schema ({store.kind}, database {store.database}) is at version {version}; "
            f"the latest is {LATEST}.",
            hint="Run: python manage.py initstores",
            id="consistency.W006",
        )
    ]


@register(Tags.database)
def check_vector_collection(
    app_configs: Any = None, databases: Iterable[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """consistency.W007: the Milvus collection exists."""
    if not databases:
        return []
    from consistency.stores.vectors import get_vectors

    try:
        store = get_vectors()
        if store.exists():
            return []
    except (StoreError, ValueError) as exc:
        return [_unreachable("the vector store", exc, "consistency.W007")]
    return [
        Warning(
            f"The Milvus collection {store.collection!r} does not exist.",
            hint="Run: python manage.py initstores",
            id="consistency.W007",
        )
    ]


@register(Tags.database)
def check_schema_drift(
    app_configs: Any = None, databases: Iterable[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """consistency.W008: each named database's schema is what its applied migrations say."""
    found: list[CheckMessage] = []
    for alias in databases or ():
        try:
            differences, _ = schema_parity.schema_differences(alias)
        except DatabaseError as exc:
            found.append(_unreachable(f"database {alias!r}", exc, "consistency.W008"))
            continue
        if differences:
            shown = "; ".join(d.detail for d in differences[:5]) + ("; ..." if len(differences) > 5 else "")
            found.append(
                Warning(
                    f"The schema of database {alias!r} departs from its migrations in "
                    f"{len(differences)} place(s): {shown}.",
                    hint=f"Run: python manage.py checkconsistency --tag schema, then fix the database "
                    f"or add a migration (schema_{alias}).",
                    id="consistency.W008",
                )
            )
    return found


def _unreachable(what: str, exc: BaseException, check_id: str) -> Warning:
    message = getattr(exc, "message", None) or str(exc).strip().splitlines()[0]
    return Warning(f"Cannot check {what}: {message}", hint="Is the store running and reachable?", id=check_id)
