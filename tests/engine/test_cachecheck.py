"""Cache parity against real Redis (django-redis) and the local-memory cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches
from django.test import override_settings

from consistency.auth_service.models import AuthUser
from consistency.backend.models import Thread
from consistency.cachekeys import auth_user_key, auth_user_payload, backend_thread_key, thread_payload
from consistency.engine import repair
from consistency.engine.cachecheck import CacheParity
from consistency.engine.cacheread import CacheReader
from consistency.engine.findings import AuditContext
from consistency.engine.registry import registry
from consistency.models import RepairLog
from tests.commands import checkconsistency as run
from tests.factories import AuthUserFactory, ThreadFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "auth"])

LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "h6-test"}}
USERS = CacheParity(name="t_cache_users", entities=("auth_user",))
THREADS = CacheParity(name="t_cache_threads", entities=("backend_thread",))


@pytest.fixture(params=["redis", "locmem"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "redis":
        caches["default"].clear()
        yield "redis"
        caches["default"].clear()
        return
    with override_settings(CACHES=LOCMEM):
        caches["default"].clear()
        yield "cache"
        caches["default"].clear()


def audit(decl: CacheParity) -> tuple[dict[str, Any], dict[str, Any]]:
    findings, figures = decl.audit(AuditContext(started_at=None, settle=0))  # type: ignore[arg-type]
    return {f.key: f for f in findings}, figures


def put_raw(key: str, raw: bytes) -> None:
    """Write bytes that are no valid entry, bypassing the cache's serializer."""
    cache = caches["default"]
    made = cache.make_key(key)
    if hasattr(cache, "client"):
        cache.client.get_client(write=True).set(made, raw, ex=3600)
    else:
        cache._cache[made] = raw  # type: ignore[attr-defined]
        cache._expire_info[made] = None  # type: ignore[attr-defined]


def drifted_users() -> dict[str, str]:
    """Fresh, stale, orphan, undecodable and never-expiring auth:user entries; id by role."""
    cache = caches["default"]
    fresh, stale, no_ttl, broken = (AuthUserFactory.create() for _ in range(4))
    for user in (fresh, stale, broken):
        cache.set(auth_user_key(user.pk), auth_user_payload(user), timeout=3600)
    cache.set(auth_user_key(no_ttl.pk), auth_user_payload(no_ttl), timeout=None)
    # update() sends no signal, so the sync code does not refresh the entry.
    AuthUser.objects.using("auth").filter(pk=stale.pk).update(full_name="Renamed")
    cache.set(auth_user_key("gone-1"), {"id": "gone-1", "email": "x@y.z"}, timeout=3600)
    put_raw(auth_user_key(broken.pk), b"\x80not json{")
    return {"fresh": fresh.pk, "stale": stale.pk, "no_ttl": no_ttl.pk, "broken": broken.pk}


def test_store__names_the_backend(backend: str) -> None:
    assert USERS.store == backend


def test_audit__reports_each_drift_kind(backend: str) -> None:
    ids = drifted_users()
    found, figures = audit(USERS)
    assert {k: f.kind for k, f in found.items()} == {
        auth_user_key(ids["stale"]): "stale",
        auth_user_key("gone-1"): "orphan",
        auth_user_key(ids["broken"]): "invariant",
        auth_user_key(ids["no_ttl"]): "invariant",
    }
    assert figures["compared"] == 5
    assert found[auth_user_key(ids["stale"])].fields == ("full_name",)
    assert found[auth_user_key(ids["stale"])].source["full_name"] == "Renamed"
    reason = "not valid JSON" if backend == "redis" else "cannot be unpickled"
    assert f"undecodable entry: {reason}" in found[auth_user_key(ids["broken"])].detail
    assert found[auth_user_key(ids["no_ttl"])].detail.startswith("no expiry")
    assert "auth_users@auth has no row 'gone-1'" in found[auth_user_key("gone-1")].detail


def test_audit__json_that_is_not_an_object_is_undecodable(backend: str) -> None:
    user = AuthUserFactory.create()
    put_raw(auth_user_key(user.pk), b"[1, 2]")
    found, _ = audit(USERS)
    expected = "JSON list, not an object" if backend == "redis" else "cannot be unpickled"
    assert expected in found[auth_user_key(user.pk)].detail


def test_audit__an_equal_value_in_other_bytes_is_not_stale() -> None:
    """Redis: entries are first compared as bytes; differing bytes of an equal value still agree."""
    caches["default"].clear()
    same, renamed = AuthUserFactory.create(), AuthUserFactory.create()
    for user in (same, renamed):
        payload = auth_user_payload(user)
        reordered = dict(reversed(list(payload.items())))  # another writer's key order and spacing
        put_raw(auth_user_key(user.pk), json.dumps(reordered, indent=1).encode())
    AuthUser.objects.using("auth").filter(pk=renamed.pk).update(full_name="Renamed")
    found, figures = audit(USERS)
    assert {k: f.kind for k, f in found.items()} == {auth_user_key(renamed.pk): "stale"}
    assert figures["compared"] == 2


def test_audit__few_entries_of_a_large_table_are_read_by_id(backend: str) -> None:
    """With under 5% of the rows cached the sweep looks the cached ids up instead of streaming."""
    users = AuthUserFactory.create_batch(45)
    for user in users[:2]:
        caches["default"].set(auth_user_key(user.pk), auth_user_payload(user), timeout=3600)
    AuthUser.objects.using("auth").filter(pk=users[1].pk).update(full_name="Renamed")
    found, figures = audit(USERS)
    assert {k: f.kind for k, f in found.items()} == {auth_user_key(users[1].pk): "stale"}
    assert figures["compared"] == 2


def test_audit__thread_entries_and_batches(backend: str) -> None:
    owner = UserFactory.create()
    threads = [ThreadFactory.create(user=owner) for _ in range(7)]
    for thread in threads:
        caches["default"].set(backend_thread_key(thread.pk), thread_payload(thread), timeout=60)
    Thread.objects.filter(pk=threads[3].pk).update(metadata={"user_id": owner.pk, "title": "new"})
    found, figures = audit(CacheParity(name="t", entities=("backend_thread",), batch_size=2))
    assert list(found) == [backend_thread_key(threads[3].pk)]
    assert figures["compared"] == 7


def test_audit__sample_checks_random_keys(backend: str) -> None:
    ids = drifted_users()
    found, figures = audit(CacheParity(name="t", entities=("auth_user",), sample=200))
    assert figures["mode"] == "sample 200"
    assert figures["compared"] == 5  # 200 draws over 5 keys: every key is drawn
    assert auth_user_key(ids["stale"]) in found


def test_repair__dry_run_then_execute_is_idempotent(backend: str) -> None:
    ids = drifted_users()
    findings, _ = USERS.audit(AuditContext(started_at=None, settle=0))  # type: ignore[arg-type]
    actions = repair.plan(USERS, findings)
    assert {a.key: a.action for a in actions} == {
        auth_user_key(ids["stale"]): "refresh",
        auth_user_key(ids["no_ttl"]): "refresh",
        auth_user_key("gone-1"): "delete",
        auth_user_key(ids["broken"]): "delete",
    }
    assert audit(USERS)[0].keys() == {a.key for a in actions}  # planning changed nothing
    logs = repair.execute(USERS, actions)
    assert all(log.verified for log in logs)
    assert audit(USERS)[0] == {}
    assert caches["default"].get(auth_user_key(ids["stale"]))["full_name"] == "Renamed"
    again = repair.execute(USERS, actions)
    assert sorted(log.result for log in again) == [
        "already gone",
        "already gone",
        *["refreshed from the row"] * 2,
    ]
    assert RepairLog.objects.filter(check_name=USERS.name).count() == 8


def test_reader__scans_redis_without_keys() -> None:
    caches["default"].clear()
    raw = caches["default"].client.get_client(write=True)  # type: ignore[attr-defined]
    for i in range(30):
        raw.set(caches["default"].make_key(f"auth:user:k{i}"), b"{}")
    before = raw.info("commandstats").get("cmdstat_keys", {}).get("calls", 0)
    keys = [k for batch in CacheReader().scan("auth:user:", 7) for k in batch]
    assert len(keys) == 30
    assert raw.info("commandstats").get("cmdstat_keys", {}).get("calls", 0) == before


def test_command__lists_cache_checks_with_store_and_kind() -> None:
    code, out = run("--list", "--tag", "cache")
    assert code == 0
    lines = [line.split() for line in out.splitlines()[1:]]
    assert {line[0] for line in lines} == {
        "cache_auth_sessions",
        "cache_auth_users",
        "cache_backend_threads",
        "cache_backend_users",
    }
    assert {(line[1], line[2]) for line in lines} == {("cache", "redis")}


def test_command__drift_exit_1_and_unreachable_redis_exit_2() -> None:
    caches["default"].clear()
    drifted_users()
    assert run("cache_auth_users")[0] == 1
    assert "cache_auth_users" in registry
    unreachable = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1},
        }
    }
    with override_settings(CACHES=unreachable):
        code, out = run("--tag", "cache")
    assert code == 2
    assert "error" in out.lower()
    caches["default"].clear()
