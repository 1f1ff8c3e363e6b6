"""Cache keys have the services' formats; payloads are JSON and hold no secret."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.core.cache import cache

from consistency import cachekeys as ck
from tests.factories import AuthSessionFactory, AuthUserFactory, ThreadFactory, UserFactory


def test_key_formats() -> None:
    assert ck.auth_session_key("s1") == "auth:session:s1"
    assert ck.auth_user_key("u1") == "auth:user:u1"
    assert ck.backend_user_key("u1") == "backend:user:u1"
    assert ck.backend_thread_key("thread_abc") == "backend:thread:thread_abc"


def test_registry__one_entry_per_cached_entity() -> None:
    assert [(e.name, e.prefix, e.alias, e.model._meta.db_table) for e in ck.CACHED_ENTITIES] == [
        ("auth_session", "auth:session:", "auth", "auth_sessions"),
        ("auth_user", "auth:user:", "auth", "auth_users"),
        ("backend_user", "backend:user:", "default", "users"),
        ("backend_thread", "backend:thread:", "default", "threads"),
    ]
    for entity in ck.CACHED_ENTITIES:
        assert entity.key("42") == f"{entity.prefix}42"
        assert entity.id_of(entity.key("42")) == "42"


def test_registry__id_of_refuses_a_foreign_key() -> None:
    with pytest.raises(ValueError, match="does not start with 'auth:user:'"):
        ck.cached_entity("auth_user").id_of("backend:user:1")


def test_registry__unknown_name_is_named() -> None:
    with pytest.raises(KeyError, match="unknown cached entity 'nope'"):
        ck.cached_entity("nope")


def test_json_value__datetimes_become_utc_iso_strings() -> None:
    paris = dt.timezone(dt.timedelta(hours=2))
    assert ck.json_value(dt.datetime(2024, 5, 1, 12, 0, tzinfo=paris)) == "2024-05-01T10:00:00Z"
    assert ck.json_value(dt.datetime(2024, 5, 1, 12, 0)) == "2024-05-01T12:00:00Z"
    assert ck.json_value(None) is None
    assert ck.json_value({"a": 1}) == {"a": 1}


@pytest.mark.django_db(databases=["default", "auth"])
def test_payloads__no_secret_field_and_json_round_trip() -> None:
    auth_user = AuthUserFactory.create(provider_data={"token": "provider-secret"})
    session = AuthSessionFactory.create(user=auth_user)
    thread = ThreadFactory.create()
    backend_user = UserFactory.create()
    built = {
        "auth_user": (ck.auth_user_payload(auth_user), auth_user),
        "backend_user": (ck.backend_user_payload(backend_user), backend_user),
        "backend_thread": (ck.thread_payload(thread), thread),
        "auth_session": (ck.session_payload(session), session),
    }
    secrets = {
        str(auth_user.hashed_password),
        session.refresh_token_hash,
        str(backend_user.hashed_password),
        "provider-secret",
    }
    assert "None" not in secrets
    for name, (payload, obj) in built.items():
        assert not ck.SECRET_FIELDS & payload.keys(), name
        text = json.dumps(payload)
        assert json.loads(text) == payload
        for secret in secrets:
            assert secret not in text, name
        assert payload["id"] == obj.pk
    assert built["auth_user"][0]["email"] == auth_user.email
    assert built["auth_session"][0]["user_id"] == auth_user.id
    assert built["backend_thread"][0]["metadata"] == {"user_id": thread.user_id}
    assert built["auth_user"][0]["created_at"].endswith("Z")


@pytest.mark.django_db(databases=["default", "auth"])
def test_payload__survives_the_configured_cache() -> None:
    user = AuthUserFactory.create()
    key = ck.auth_user_key(user.id)
    cache.set(key, ck.auth_user_payload(user), timeout=60)
    try:
        assert cache.get(key) == ck.auth_user_payload(user)
    finally:
        cache.delete(key)
