"""The router keeps the auth service on ``auth`` and everything else on ``default``."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.db import connections, router
from django.db.models import Model

from consistency.auth_service.models import AuthUser
from tests.factories import AuthSessionFactory, AuthUserFactory, ThreadFactory

DEFAULT_APPS = ("backend", "admin", "auth", "contenttypes", "sessions", "django_celery_beat")
AUTH_MODELS = list(apps.get_app_config("auth_service").get_models())
DEFAULT_MODELS = [model for label in DEFAULT_APPS for model in apps.get_app_config(label).get_models()]


def _name(model: type[Model]) -> str:
    return model._meta.label


def test_apps_under_test_have_models() -> None:
    assert {m._meta.db_table for m in AUTH_MODELS} == {
        "auth_users",
        "auth_sessions",
        "auth_audit_logs",
        "password_reset_tokens",
        "auth_outbox",
        "auth_outbox_versions",
    }
    assert {"users", "threads", "messages", "django_celery_beat_periodictask"} <= {
        m._meta.db_table for m in DEFAULT_MODELS
    }


@pytest.mark.parametrize("model", AUTH_MODELS, ids=_name)
def test_auth_service_model__routed_to_auth(model: type[Model]) -> None:
    assert router.db_for_read(model) == "auth"
    assert router.db_for_write(model) == "auth"
    assert router.allow_migrate_model("auth", model) is True
    assert router.allow_migrate_model("default", model) is False


@pytest.mark.parametrize("model", DEFAULT_MODELS, ids=_name)
def test_other_app_model__routed_to_default(model: type[Model]) -> None:
    assert router.db_for_read(model) == "default"
    assert router.db_for_write(model) == "default"
    assert router.allow_migrate_model("default", model) is True
    assert router.allow_migrate_model("auth", model) is False


@pytest.mark.django_db(databases=["default", "auth"])
def test_tables_exist_only_in_their_database() -> None:
    auth_tables = set(connections["auth"].introspection.table_names())
    default_tables = set(connections["default"].introspection.table_names())
    for model in AUTH_MODELS:
        assert model._meta.db_table in auth_tables, model
        assert model._meta.db_table not in default_tables, model
    for model in DEFAULT_MODELS:
        if model._meta.managed and not model._meta.proxy:
            assert model._meta.db_table in default_tables, model
            assert model._meta.db_table not in auth_tables, model


@pytest.mark.django_db(databases=["default", "auth"])
def test_factory_auth_user__lives_on_auth_only() -> None:
    user = AuthUserFactory.create()
    assert AuthUser.objects.using("auth").get(pk=user.pk).email == user.email
    with connections["default"].cursor() as cursor:
        tables = connections["default"].introspection.table_names(cursor)
    assert "auth_users" not in tables
    # The default manager reads through the router, so no `using` is needed.
    assert AuthUser.objects.filter(pk=user.pk).exists()


@pytest.mark.django_db(databases=["default", "auth"])
def test_factories__follow_their_links_on_each_alias() -> None:
    session = AuthSessionFactory.create()
    thread = ThreadFactory.create()
    assert session._state.db == "auth"
    assert session.user._state.db == "auth"
    assert thread._state.db == "default"
    assert thread.metadata == {"user_id": thread.user_id}
