"""Cache-aside reads of the four cached entities, with invalidation after commit.

A fill that races a write must not store the old value. Every key has a version
counter (``cachever:<key>``) that an invalidation increments before it deletes
the entry; a fill reads the counter before it reads the row and stores the row
only if the counter has not moved since (one atomic compare-and-set in Redis).
So a write that commits while a reader holds the old row makes that reader's
store a no-op, and the next read loads the new row.

Signals invalidate ORM saves and deletes; ``update()``, ``bulk_*`` and raw SQL
send no signal, so those paths call :func:`invalidate_rows` themselves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.db import models, transaction

from consistency.cachekeys import CACHED_ENTITIES, CachedEntity, cached_entity
from consistency.sync.conf import sync_setting

logger = logging.getLogger("consistency.sync.cache")

VERSION_PREFIX = "cachever:"
# KEYS[1]: version key, KEYS[2]: entry; ARGV: version read before the load, value, ttl.
_CAS_LUA = """
local current = redis.call('GET', KEYS[1]) or '0'
if current == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""
# KEYS: (version key, entry) pairs; ARGV[1]: the version counters' ttl.
_INVALIDATE_LUA = """
for i = 1, #KEYS, 2 do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
  redis.call('DEL', KEYS[i + 1])
end
return #KEYS / 2
"""
_local_lock = threading.Lock()


def _cache() -> BaseCache:
    return caches["default"]


def _redis(cache: BaseCache) -> Any | None:
    """The raw redis client behind a django-redis cache, else None (local memory)."""
    client = getattr(cache, "client", None)
    return client.get_client(write=True) if client is not None and hasattr(client, "get_client") else None


def version_key(key: str) -> str:
    """The key of ``key``'s version counter; outside every entity's prefix, so audits skip it."""
    return f"{VERSION_PREFIX}{key}"


def begin_fill(key: str) -> int:
    """Step 1 of a fill: the version to present to :func:`finish_fill`. Read before the row."""
    return int(_cache().get(version_key(key)) or 0)


def finish_fill(key: str, token: int, payload: dict[str, Any], ttl: int) -> bool:
    """Step 2 of a fill: store ``payload`` only if no invalidation happened since ``token``."""
    cache = _cache()
    raw = _redis(cache)
    if raw is None:
        with _local_lock:
            if int(cache.get(version_key(key)) or 0) != token:
                return False
            cache.set(key, payload, ttl)
            return True
    encoded = cache.client.encode(payload)  # type: ignore[attr-defined]
    keys = [cache.make_key(version_key(key)), cache.make_key(key)]
    return bool(raw.eval(_CAS_LUA, 2, *keys, str(token), encoded, int(ttl)))


def invalidate(keys: Iterable[str]) -> None:
    """Bump each key's version, then drop the entry (raises if the cache is unreachable)."""
    keys = list(keys)
    if not keys:
        return
    cache = _cache()
    ttl = int(sync_setting("CACHE_VERSION_TTL"))
    raw = _redis(cache)
    if raw is None:
        with _local_lock:
            for key in keys:
                cache.set(version_key(key), int(cache.get(version_key(key)) or 0) + 1, ttl)
                cache.delete(key)
        return
    for start in range(0, len(keys), 1000):  # one atomic script call per thousand keys
        pairs: list[str] = []
        for key in keys[start : start + 1000]:
            pairs += [cache.make_key(version_key(key)), cache.make_key(key)]
        raw.eval(_INVALIDATE_LUA, len(pairs), *pairs, ttl)


def invalidate_or_retry(keys: Sequence[str]) -> None:
    """Invalidate now; if the cache fails, hand the keys to a retrying Celery task."""
    try:
        invalidate(keys)
    except Exception as exc:
        logger.warning("cache invalidation of %d keys failed (%s); retrying in a task", len(keys), exc)
        from consistency.tasks import invalidate_cache_keys

        invalidate_cache_keys.apply_async((list(keys),), countdown=1)


def invalidate_on_commit(keys: Sequence[str], using: str) -> None:
    """Invalidate ``keys`` once the transaction on ``using`` commits (at once in autocommit)."""
    if keys:
        transaction.on_commit(partial(invalidate_or_retry, list(keys)), using=using)


def entity_for(model: type[models.Model]) -> CachedEntity | None:
    """The cached entity whose rows are ``model``'s, if any."""
    for entity in CACHED_ENTITIES:
        if entity.model is model:
            return entity
    return None


def invalidate_rows(model: type[models.Model], pks: Iterable[object], using: str) -> None:
    """The explicit invalidation for paths signals miss (``update()``, ``bulk_*``, raw SQL)."""
    entity = entity_for(model)
    if entity is not None:
        invalidate_on_commit([entity.key(pk) for pk in pks], using)


def read(name: str, pk: object) -> dict[str, Any] | None:
    """The cached payload of entity ``name`` for row ``pk``, loaded and cached on a miss."""
    entity = cached_entity(name)
    key = entity.key(pk)
    cache = _cache()
    hit = cache.get(key)
    if hit is not None:
        return dict(hit)
    token = begin_fill(key)
    row = entity.model._default_manager.using(entity.alias).filter(pk=pk).first()
    if row is None:
        return None  # absent rows are not cached: a later create needs no invalidation
    payload = entity.payload(row)
    finish_fill(key, token, payload, entity.ttl)
    return payload


def read_auth_user(pk: object) -> dict[str, Any] | None:
    """``auth:user:{pk}`` through the cache."""
    return read("auth_user", pk)


def read_auth_session(pk: object) -> dict[str, Any] | None:
    """``auth:session:{pk}`` through the cache."""
    return read("auth_session", pk)


def read_backend_user(pk: object) -> dict[str, Any] | None:
    """``backend:user:{pk}`` through the cache."""
    return read("backend_user", pk)


def read_backend_thread(pk: object) -> dict[str, Any] | None:
    """``backend:thread:{pk}`` through the cache."""
    return read("backend_thread", pk)
