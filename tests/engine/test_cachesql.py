"""The cached bytes' fingerprint computed inside PostgreSQL equals the one of what the cache stores."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.core.cache import caches
from django.db import connections

from consistency.cachekeys import cached_entity
from consistency.engine.cachecheck import _FIELDS, CacheParity, payloads
from consistency.engine.cacheread import CacheReader
from consistency.engine.cachesql import fingerprint, select_sql
from consistency.engine.findings import AuditContext
from tests.factories import AuthSessionFactory, AuthUserFactory, ThreadFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "auth"])

MICRO = dt.datetime(2026, 2, 3, 4, 5, 6, 789, tzinfo=dt.UTC)
WHOLE = dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _postgresql_and_redis() -> None:
    if connections["default"].vendor != "postgresql" or not CacheReader().is_redis:
        pytest.skip("the fingerprint is computed in PostgreSQL and compared with Redis' bytes")


def sql_fingerprints(name: str) -> dict[str, int | None]:
    entity = cached_entity(name)
    sql = select_sql(entity, _FIELDS[name], by_id=False)
    assert sql is not None
    with connections[entity.alias].cursor() as cursor:
        cursor.execute(sql)
        return dict(cursor.fetchall())


def stored_fingerprints(name: str) -> dict[str, int]:
    """The fingerprint of the bytes django-redis stores for each row's payload."""
    entity = cached_entity(name)
    rows = entity.model._default_manager.using(entity.alias).values_list("pk", flat=True)
    encode = caches["default"].client.encode  # type: ignore[attr-defined]
    return {
        entity.id_of(key): fingerprint(encode(payload))
        for key, payload in payloads(entity, [str(pk) for pk in rows]).items()
    }


def test_every_entity_type_prints_as_json_dumps() -> None:
    user = UserFactory.create(
        full_name='Ada "the" \\ Lovelace',
        permissions={"b": [1, 2], "a": {"x": None, "ok": True}},
        feature_flags={},
        plan_started_at=MICRO,
        plan_expires_at=None,
        created_at=WHOLE,
    )
    auth_user = AuthUserFactory.create(last_login_at=MICRO, full_name="Plain Name")
    AuthSessionFactory.create(user=auth_user, user_agent='Mozilla/5.0 (X11; "q")', revoked_at=None)
    # 1e20 is stored as the integer 100000000000000000000, which Python prints alike.
    ThreadFactory.create(user=user, metadata={"user_id": user.pk, "n": -3, "big": 1e20})
    for name in ("backend_user", "auth_user", "auth_session", "backend_thread"):
        in_sql = sql_fingerprints(name)
        assert in_sql, name
        assert in_sql == stored_fingerprints(name), name


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"full_name": "Zoë"}, "non-ASCII text"),
        ({"full_name": "line\x01"}, "a control character"),
        ({"permissions": {"ratio": 1.5}}, "a JSON number with a fraction"),
        ({"feature_flags": {"tiny": 1e-05}}, "a JSON number Python prints with an exponent"),
    ],
)
def test_values_postgresql_prints_otherwise_get_no_fingerprint(changes: dict[str, Any], why: str) -> None:
    user = UserFactory.create(**changes)
    plain = UserFactory.create()
    in_sql = sql_fingerprints("backend_user")
    assert in_sql[user.pk] is None, why
    assert in_sql[plain.pk] == stored_fingerprints("backend_user")[plain.pk]


def test_audit__rows_without_an_sql_fingerprint_are_compared_in_python() -> None:
    caches["default"].clear()
    same, renamed = UserFactory.create(full_name="Zoë"), UserFactory.create(full_name="Chloë")
    entity = cached_entity("backend_user")
    for user in (same, renamed):
        caches["default"].set(entity.key(user.pk), entity.payload(user), timeout=3600)
    type(renamed).objects.filter(pk=renamed.pk).update(full_name="Chloé")
    decl = CacheParity(name="t", entities=("backend_user",))
    findings, figures = decl.audit(AuditContext(started_at=None, settle=0))  # type: ignore[arg-type]
    assert {f.key: f.kind for f in findings} == {entity.key(renamed.pk): "stale"}
    assert figures["compared"] == 2
    caches["default"].clear()
