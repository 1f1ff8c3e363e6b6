"""Each system check fires on a broken setup and stays quiet on a correct one."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.test import override_settings
from pytest_django.fixtures import Settings as SettingsWrapper

from consistency import checks
from consistency.engine.declarations import Declaration
from consistency.engine.registry import registry
from consistency.stores.analytics import close_analytics, get_analytics
from consistency.stores.analytics_versions import migrate_analytics
from consistency.stores.vectors import close_vectors, get_vectors
from project.settings import _DEV_SECRET


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


class EverythingOnDefault:
    """A router that forgets the auth service has its own database."""

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return "default"

    db_for_write = db_for_read

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db == "default"


@dataclass(frozen=True)
class RedisProbe(Declaration):
    """A declaration that audits Redis, as the cache checks do."""

    @property
    def store(self) -> str:
        return "redis"

    def validate(self) -> None:
        return None


@pytest.fixture
def redis_declaration() -> Iterator[None]:
    registry.autodiscover()
    registry.register(RedisProbe(name="t_redis_probe"))
    yield
    registry.unregister("t_redis_probe")


# --- E002: routing -------------------------------------------------------------


def test_e002__quiet_with_the_service_router() -> None:
    assert checks.check_database_routing() == []


def test_e002__fires_for_each_model_routed_to_the_wrong_database(settings: SettingsWrapper) -> None:
    settings.DATABASE_ROUTERS = ["tests.test_checks.EverythingOnDefault"]
    errors = checks.check_database_routing()
    assert set(ids(errors)) == {"consistency.E002"}
    labels = {e.obj._meta.label for e in errors}
    assert "auth_service.AuthUser" in labels
    assert not any(label.startswith("backend.") for label in labels)
    assert "routed to ['default'], not to its database 'auth'" in errors[0].msg
    assert errors[0].hint


def test_e002__fires_when_an_alias_is_missing(settings: SettingsWrapper) -> None:
    with pytest.warns(UserWarning, match="DATABASES"):
        settings.DATABASES = {"default": settings.DATABASES["default"]}
    errors = checks.check_database_routing()
    assert [(e.id, "'auth' is missing" in e.msg) for e in errors] == [("consistency.E002", True)]
    assert "AUTH_DATABASE_URL" in str(errors[0].hint)


# --- E003: the cache behind Redis declarations ----------------------------------


def test_e003__quiet_with_django_redis(redis_declaration: None) -> None:
    assert checks.check_cache_backend() == []


def test_e003__quiet_without_redis_declarations(settings: SettingsWrapper) -> None:
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert checks.check_cache_backend() == []


def test_e003__fires_when_a_redis_declaration_meets_another_cache(
    redis_declaration: None, settings: SettingsWrapper
) -> None:
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    errors = checks.check_cache_backend()
    assert ids(errors) == ["consistency.E003"]
    assert "t_redis_probe" in errors[0].msg
    assert "REDIS_URL" in str(errors[0].hint)


# --- E004: the CONSISTENCY settings ----------------------------------------------


def test_e004__quiet_on_the_project_settings_and_every_default() -> None:
    from consistency.conf import DEFAULTS

    assert checks.check_app_settings() == []
    with override_settings(CONSISTENCY=dict(DEFAULTS)):
        assert checks.check_app_settings() == []


def test_e004__names_a_key_the_app_does_not_read_and_the_one_meant(settings: SettingsWrapper) -> None:
    settings.CONSISTENCY = {"SETLE_SECONDS": 0, "RANGE_CACHE_DIR": None}
    errors = checks.check_app_settings()
    assert ids(errors) == ["consistency.E004"]
    assert (
        errors[0].msg
        == "CONSISTENCY['SETLE_SECONDS'] is not a setting of this app (did you mean 'SETTLE_SECONDS'?)"
    )
    assert errors[0].hint


def test_e004__names_each_unusable_value_and_never_shows_url_credentials(settings: SettingsWrapper) -> None:
    settings.CONSISTENCY = {
        "SETTLE_SECONDS": float("nan"),
        "FANOUT_SEGMENTS": 0,
        "FANOUT_ROWS": None,  # fine: never fan out
        "SYNC_DELETE": "drop",
        "SCHEDULED_AUDITS": "yes",
        "PLACEHOLDER_EMAIL_PATTERNS": [r"@example\.com$", "(unclosed"],
        "ALERT_WEBHOOK_URL": "ftp://ops:s3cret@hooks.internal/drift",
        "SECRET_FIELDS": "password",
    }
    messages = [e.msg for e in checks.check_app_settings()]
    named = sorted(re.match(r"CONSISTENCY\['(\w+)'\]", m).group(1) for m in messages)  # type: ignore[union-attr]
    assert named == [
        "ALERT_WEBHOOK_URL",
        "FANOUT_SEGMENTS",
        "PLACEHOLDER_EMAIL_PATTERNS",
        "SCHEDULED_AUDITS",
        "SECRET_FIELDS",
        "SETTLE_SECONDS",
        "SYNC_DELETE",
    ]
    assert "CONSISTENCY['SYNC_DELETE'] is 'drop': expected one of 'delete', 'deactivate'" in messages
    assert not any("s3cret" in m for m in messages)
    assert any("ftp://ops:***@hooks.internal/drift" in m for m in messages)


def test_e004__settings_that_are_not_a_dict(settings: SettingsWrapper) -> None:
    settings.CONSISTENCY = [("SETTLE_SECONDS", 0)]
    assert [e.msg for e in checks.check_app_settings()] == [
        "settings.CONSISTENCY is a list: expected a dict of settings"
    ]


# --- W001: the beat scheduler ----------------------------------------------------


def test_w001__quiet_with_the_database_scheduler() -> None:
    assert checks.check_beat_scheduler() == []


def test_w001__fires_for_another_scheduler_while_audits_are_scheduled(settings: SettingsWrapper) -> None:
    settings.CELERY_BEAT_SCHEDULER = "celery.beat:PersistentScheduler"
    assert ids(checks.check_beat_scheduler()) == ["consistency.W001"]
    settings.CONSISTENCY = {"SCHEDULED_AUDITS": False}
    assert checks.check_beat_scheduler() == []


# --- W002-W004: deploy ----------------------------------------------------------


def test_deploy__quiet_on_production_settings(settings: SettingsWrapper) -> None:
    settings.DEBUG = False
    settings.SECRET_KEY = uuid.uuid4().hex * 2
    assert checks.check_deploy_settings() == []


def test_deploy__fires_for_debug_dev_key_and_default_credentials(settings: SettingsWrapper) -> None:
    settings.DEBUG = True
    settings.SECRET_KEY = _DEV_SECRET
    with pytest.warns(UserWarning, match="DATABASES"):
        settings.DATABASES = {
            **settings.DATABASES,
            "default": {**settings.DATABASES["default"], "HOST": "db.internal", "PASSWORD": "postgres"},
        }
    settings.CELERY_BROKER_URL = "amqp://guest:guest@rabbit.internal:5672//"
    settings.CLICKHOUSE_URL = "clickhouse://default@ch.internal:9000/analytics"
    found = checks.check_deploy_settings()
    assert ids(found) == ["consistency.W002", "consistency.W003"] + ["consistency.W004"] * 3
    shown = " ".join(m.msg for m in found[2:])
    assert "DATABASES['default'] connects to db.internal" in shown
    assert "CLICKHOUSE_URL connects to ch.internal as default with no password" in shown
    assert (
        "CELERY_BROKER_URL connects to rabbit.internal as guest with a well-known default password" in shown
    )
    assert "postgres@" not in shown
    assert ":guest@" not in shown
    registered = run_checks(include_deployment_checks=True, tags=["security"])
    assert {"consistency.W002", "consistency.W003", "consistency.W004"} <= set(ids(registered))


# --- W005: unapplied migrations --------------------------------------------------


def test_w005__only_with_databases() -> None:
    assert checks.check_unapplied_migrations(databases=None) == []


@pytest.mark.django_db(transaction=True, databases=["default", "auth"])
def test_w005__fires_for_an_unapplied_migration_then_quiet_after_migrate() -> None:
    executor = MigrationExecutor(connections["default"])
    executor.migrate([("backend", "0001_initial")])
    try:
        found = checks.check_unapplied_migrations(databases=["default", "auth"])
        assert ids(found) == ["consistency.W005"]
        assert (
            "1 migration(s) not applied on database 'default': backend.0002_lowercase_user_emails"
            in found[0].msg
        )
        assert found[0].hint == "Run: python manage.py migrate --database default"
    finally:
        call_command("migrate", database="default", verbosity=0, skip_checks=True)
    assert checks.check_unapplied_migrations(databases=["default", "auth"]) == []


# --- W006/W007: analytics schema version, vector collection ----------------------


@pytest.fixture
def fresh_stores(settings: SettingsWrapper) -> Iterator[None]:
    """Point the settings at an analytics database and a collection that do not exist yet."""
    suffix = uuid.uuid4().hex[:8]
    settings.CLICKHOUSE_URL = settings.CLICKHOUSE_URL.rsplit("/", 1)[0] + f"/h5_checks_{suffix}"
    settings.CONSISTENCY = {"MILVUS_COLLECTION": f"h5_checks_{suffix}", "EMBEDDING_DIM": 8}
    yield
    get_analytics().execute(f"DROP DATABASE IF EXISTS h5_checks_{suffix}")
    get_vectors().drop()
    close_analytics()
    close_vectors()


def test_w006__fires_behind_the_latest_version_then_quiet(fresh_stores: None) -> None:
    assert checks.check_analytics_schema(databases=None) == []
    found = checks.check_analytics_schema(databases=["default"])
    assert ids(found) == ["consistency.W006"]
    assert "is at version 0; the latest is 2" in found[0].msg
    migrate_analytics(get_analytics())
    assert checks.check_analytics_schema(databases=["default"]) == []


def test_w006__names_an_unreachable_store(settings: SettingsWrapper) -> None:
    settings.CLICKHOUSE_URL = "clickhouse://default:s3cret@127.0.0.1:1/nowhere"
    found = checks.check_analytics_schema(databases=["default"])
    close_analytics()
    assert ids(found) == ["consistency.W006"]
    assert found[0].msg.startswith("Cannot check the analytics store")
    assert "s3cret" not in found[0].msg


def test_w007__fires_for_a_missing_collection_then_quiet(fresh_stores: None) -> None:
    assert checks.check_vector_collection(databases=None) == []
    found = checks.check_vector_collection(databases=["default"])
    assert ids(found) == ["consistency.W007"]
    assert "does not exist" in found[0].msg
    get_vectors().ensure_collection()
    assert checks.check_vector_collection(databases=["default"]) == []


# --- the whole command -----------------------------------------------------------


@pytest.mark.django_db(databases=["default", "auth"])
def test_check_command__clean_on_a_correct_setup() -> None:
    call_command("initstores", stdout=StringIO())
    out = StringIO()
    call_command(
        "check", "--database", "default", "--database", "auth", "--fail-level", "WARNING", stdout=out
    )
    assert "System check identified no issues (0 silenced)." in out.getvalue()
