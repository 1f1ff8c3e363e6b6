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
    """Randomised: two writers increment counters on three users (row-locked, so the counter is the
    commit order), three readers read through the cache and now and then drop the entry to force
    fills; no read may return a value older than one committed (and invalidated) before it began."""
    users = [UserFactory.create(full_name="0") for _ in range(3)]
    committed = {u.pk: 0 for u in users}
    guard = threading.Lock()
    errors: list[str] = []
    stop = threading.Event()
    reads = [0]

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(30):
                pk = rng.choice(users).pk
                with transaction.atomic(using="default"):
                    row = type(users[0]).objects.select_for_update().get(pk=pk)
                    row.full_name = str(int(row.full_name) + 1)
                    row.save(update_fields=["full_name"])
                # After commit and after the invalidation it ran.
                with guard:
                    committed[pk] = max(committed[pk], int(row.full_name))
        finally:
            connections.close_all()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                pk = rng.choice(users).pk
                with guard:
                    floor = committed[pk]
                payload = cache.read_backend_user(pk)
                seen = int(payload["full_name"]) if payload else -1
                reads[0] += 1
                if seen < floor:
                    errors.append(f"{pk}: read {seen} after {floor} committed")
                if rng.random() < 0.2:
                    caches["default"].delete(backend_user_key(pk))  # force more fills
        finally:
            connections.close_all()

    seed = random.randrange(1 << 30)
    writers = [threading.Thread(target=writer, args=(seed + k,)) for k in range(2)]
    readers = [threading.Thread(target=reader, args=(seed + 10 + k,)) for k in range(3)]
    for t in (*writers, *readers):
        t.start()
    for t in writers:
        t.join(timeout=120)
    stop.set()
    for t in readers:
        t.join(timeout=30)
    assert sum(committed.values()) == 60, f"seed {seed}"
    assert reads[0] > 60, f"seed {seed}"
    assert errors == [], f"seed {seed}"
    for u in users:
        assert cache.read_backend_user(u.pk)["full_name"] == str(committed[u.pk])  # type: ignore[index]


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
