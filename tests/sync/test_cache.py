"""Cache-aside reads, invalidation after commit, and the fill/write race."""

from __future__ import annotations

import random
import threading

from django.core.cache import caches
from django.db import connections, transaction
from django.test import override_settings

from consistency.auth_service.models import AuthUser
from consistency.cachekeys import auth_user_key, backend_thread_key, backend_user_key
from consistency.sync import auth_users, cache
from consistency.sync.cache import begin_fill, finish_fill, read_auth_user, read_backend_thread, version_key
from tests.factories import ThreadFactory, UserFactory
from tests.sync.conftest import sync_db, wait_until

pytestmark = sync_db


def cached(key: str) -> object:
    return caches["default"].get(key)


def test_cache__reads_fill_then_hit_and_never_carry_secrets() -> None:
    auth_users.create_user(email="c@corp.io", user_id="u-c", hashed_password="secret-hash")
    first = read_auth_user("u-c")
    assert first is not None
    assert first["email"] == "c@corp.io"
    assert "hashed_password" not in first
    assert cached(auth_user_key("u-c")) == first
    AuthUser.objects.filter(pk="u-c").update(full_name="behind the cache's back")
    assert read_auth_user("u-c") == first  # a hit: served from the cache
    assert read_auth_user("missing") is None
    assert cached(auth_user_key("missing")) is None


def test_cache__save_invalidates_only_after_commit_on_its_alias() -> None:
    thread = ThreadFactory.create(user=UserFactory.create())
    assert read_backend_thread(thread.pk) is not None
    with transaction.atomic(using="default"):
        thread.metadata = {"user_id": thread.user_id, "title": "new"}
        thread.save()
        assert cached(backend_thread_key(thread.pk)) is not None  # not yet: still uncommitted
    assert cached(backend_thread_key(thread.pk)) is None
    assert read_backend_thread(thread.pk)["metadata"]["title"] == "new"  # type: ignore[index]


def test_cache__bulk_update_goes_through_explicit_invalidation() -> None:
    auth_users.create_user(email="bulk@corp.io", user_id="u-bulk")
    read_auth_user("u-bulk")
    auth_users.bulk_update_users(AuthUser.objects.filter(pk="u-bulk"), full_name="bulk")
    assert cached(auth_user_key("u-bulk")) is None
    assert read_auth_user("u-bulk")["full_name"] == "bulk"  # type: ignore[index]


def test_cache__a_fill_racing_a_write_never_stores_the_old_value() -> None:
    """Deterministic interleaving: reader loads the old row, writer commits, reader tries to store."""
    user = UserFactory.create(full_name="old")
    key = backend_user_key(user.pk)
    entity = cache.cached_entity("backend_user")

    token = begin_fill(key)  # reader: 1. read the version
    old = entity.payload(type(user).objects.get(pk=user.pk))  # reader: 2. load the row
    user.full_name = "new"  # writer: commit (signal invalidates after commit)
    user.save()
    assert finish_fill(key, token, old, entity.ttl) is False  # reader: 3. store refused
    assert cached(key) is None
    assert cache.read_backend_user(user.pk)["full_name"] == "new"  # type: ignore[index]

    # Without a write in between the same steps store the entry.
    token = begin_fill(key)
    fresh = entity.payload(type(user).objects.get(pk=user.pk))
    assert finish_fill(key, token, fresh, entity.ttl) is True
    assert cached(key) == fresh


def test_cache__concurrent_readers_never_see_an_older_version_after_a_commit() -> None:
    user = UserFactory.create(full_name="0")
    committed = [0]
    errors: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        for n in range(1, 41):
            user.full_name = str(n)
            user.save(update_fields=["full_name"])
            committed[0] = n  # after commit and after its invalidation
        stop.set()
        connections.close_all()

    def reader() -> None:
        rng = random.Random()
        while not stop.is_set():
            floor = committed[0]
            payload = cache.read_backend_user(user.pk)
            seen = int(payload["full_name"]) if payload else -1
            if seen < floor:
                errors.append(f"read {seen} after {floor} committed")
            if rng.random() < 0.1:
                caches["default"].delete(backend_user_key(user.pk))  # force more fills
        connections.close_all()

    threads = [threading.Thread(target=writer), *(threading.Thread(target=reader) for _ in range(3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert stop.is_set()
    assert errors == []
    assert cache.read_backend_user(user.pk)["full_name"] == "40"  # type: ignore[index]


def test_cache__a_failed_invalidation_is_retried_by_a_task(worker: object) -> None:
    user = UserFactory.create()
    key = backend_user_key(user.pk)
    caches["default"].set(key, {"stale": True})
    before = int(caches["default"].get(version_key(key)) or 0)
    down = {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}}
    with override_settings(CACHES=down):
        cache.invalidate_or_retry([key])  # fails: the cache is unreachable; queues the retry
    wait_until(lambda: cached(key) is None, what="retried invalidation")
    assert int(caches["default"].get(version_key(key)) or 0) == before + 1
