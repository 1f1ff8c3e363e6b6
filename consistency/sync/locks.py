"""A non-blocking lock in the cache (Redis in production), so overlapping audits skip."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.cache import caches

from consistency.sync.conf import sync_setting

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lock_key(name: str) -> str:
    return f"lock:audit:{name}"


@contextmanager
def cache_lock(name: str, timeout: int | None = None) -> Iterator[bool]:
    """Yield True if this caller took the lock ``name``, False if someone holds it.

    The lock expires after ``timeout`` seconds (CONSISTENCY["AUDIT_LOCK_SECONDS"]),
    so a crashed holder cannot keep it; release deletes it only if still ours.
    """
    cache = caches["default"]
    key, token = lock_key(name), uuid.uuid4().hex
    acquired = cache.add(key, token, int(timeout or sync_setting("AUDIT_LOCK_SECONDS")))
    try:
        yield acquired
    finally:
        if acquired:
            _release(key, token)


def _release(key: str, token: str) -> None:
    cache = caches["default"]
    client = getattr(cache, "client", None)
    if client is not None and hasattr(client, "get_client"):
        raw = client.get_client(write=True)
        raw.eval(_RELEASE_LUA, 1, cache.make_key(key), client.encode(token))
    elif cache.get(key) == token:
        cache.delete(key)
