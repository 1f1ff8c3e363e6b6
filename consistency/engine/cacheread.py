"""Read cache entries in bulk, on Redis (django-redis) or the local-memory cache.

- Redis: keys are listed with SCAN (``scan_iter`` with ``count``), never KEYS;
  values and TTLs come from one pipeline per batch (MGET, and one Lua call
  returning every key's PTTL), read as raw bytes through django-redis' raw
  client so an undecodable value is seen as such instead of raising.
  ``read_raw`` leaves the bytes undecoded: the audit compares them with the
  encoded row first and decodes only the entries that differ.
- Local memory (the embedded default): Django's LocMemCache has no key listing,
  so its ``_cache`` dict (made keys to pickled values) and ``_expire_info`` are
  read under its lock. This is private API, pinned by tests/engine/test_cachecheck.py.
"""

from __future__ import annotations

import json
import pickle
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.cache import caches


class Undecodable:
    """A value that is not JSON (Redis) / not unpicklable (local memory), or not a dict."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Undecodable({self.reason!r})"


@dataclass(frozen=True)
class Entry:
    """One cache entry as read: ``value`` is a dict, or Undecodable; ``ttl`` None means no expiry."""

    key: str  # the logical key, e.g. "auth:user:42"
    value: dict[str, Any] | Undecodable
    ttl: float | None


def decode_json(raw: bytes) -> dict[str, Any] | Undecodable:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return Undecodable(f"not valid JSON ({type(exc).__name__}: {str(exc)[:80]}), {len(raw)} bytes")
    if not isinstance(value, dict):
        return Undecodable(f"JSON {type(value).__name__}, not an object")
    return value


@dataclass(frozen=True)
class RawEntry:
    """One Redis entry as stored: the serializer's bytes and the TTL (None: no expiry)."""

    key: str
    raw: bytes
    ttl: float | None


# PTTL of every key in one round trip, without one command (and one reply) per key.
_PTTLS = "local out = {} for i, key in ipairs(KEYS) do out[i] = redis.call('PTTL', key) end return out"


class CacheReader:
    """Bulk access to one Django cache's entries, by logical key."""

    def __init__(self, alias: str = "default") -> None:
        self.cache: Any = caches[alias]  # django-redis or LocMemCache; both reach past BaseCache
        self.is_redis = hasattr(self.cache, "client") and hasattr(self.cache, "iter_keys")
        self.store = "redis" if self.is_redis else "cache"
        self._made_prefix = self.cache.make_key("")

    def made(self, key: str) -> str:
        return self.cache.make_key(key)

    def logical(self, made: str) -> str:
        return made[len(self._made_prefix) :]

    def _raw(self) -> Any:
        return self.cache.client.get_client(write=True)

    def scan(self, prefix: str, batch: int) -> Iterator[list[str]]:
        """Logical keys starting with ``prefix``, ``batch`` at a time."""
        keys: Iterator[str]
        if self.is_redis:
            pattern = self.made(prefix).replace("[", "\\[").replace("*", "\\*") + "*"
            keys = (k.decode() for k in self._raw().scan_iter(match=pattern, count=batch))
        else:
            made_prefix = self.made(prefix)
            with self.cache._lock:
                snapshot = [k for k in self.cache._cache if k.startswith(made_prefix)]
            keys = iter(snapshot)
        chunk: list[str] = []
        for made in keys:
            chunk.append(self.logical(made))
            if len(chunk) == batch:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def sample(self, count: int) -> list[str]:
        """Up to ``count`` random logical keys (RANDOMKEY on Redis), any entity."""
        if self.is_redis:
            pipe = self._raw().pipeline(transaction=False)
            for _ in range(count):
                pipe.randomkey()
            made = {k.decode() for k in pipe.execute() if k is not None}
        else:
            with self.cache._lock:
                keys = list(self.cache._cache)
            made = set(random.sample(keys, min(count, len(keys))))
        return sorted(self.logical(k) for k in made if k.startswith(self._made_prefix))

    def read(self, keys: Sequence[str]) -> dict[str, Entry]:
        """The entries of ``keys`` that exist (one pipeline on Redis)."""
        if not keys:
            return {}
        if self.is_redis:
            return {k: Entry(k, decode_json(e.raw), e.ttl) for k, e in self.read_raw(keys).items()}
        return self._read_locmem(keys, [self.made(k) for k in keys])

    def read_raw(self, keys: Sequence[str]) -> dict[str, RawEntry]:
        """Redis only: the entries of ``keys`` that exist, undecoded (one pipeline)."""
        if not keys:
            return {}
        made = [self.made(k) for k in keys]
        client = self._raw()
        pipe = client.pipeline(transaction=False)
        pipe.mget(made)
        pipe.eval(_PTTLS, len(made), *made)
        values, ttls = pipe.execute()
        return {
            key: RawEntry(key, raw, None if ttl < 0 else ttl / 1000)
            for key, raw, ttl in zip(keys, values, ttls, strict=True)
            if raw is not None
        }

    def encode(self, value: dict[str, Any]) -> bytes:
        """Redis only: the bytes the cache stores for ``value`` (django-redis' serializer)."""
        encoded = self.cache.client.encode(value)
        return encoded if isinstance(encoded, bytes) else str(encoded).encode()

    def _read_locmem(self, keys: Sequence[str], made: Sequence[str]) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        now = time.time()
        with self.cache._lock:
            found = [
                (k, self.cache._cache.get(m), self.cache._expire_info.get(m, -1))
                for k, m in zip(keys, made, strict=True)
            ]
        for key, pickled, expires in found:
            if pickled is None or (expires is not None and expires != -1 and expires <= now):
                continue
            try:
                value = pickle.loads(pickled)  # noqa: S301 - our own process' cache
            except Exception as exc:
                decoded: dict[str, Any] | Undecodable = Undecodable(
                    f"cannot be unpickled ({type(exc).__name__})"
                )
            else:
                decoded = (
                    value if isinstance(value, dict) else Undecodable(f"{type(value).__name__}, not a dict")
                )
            out[key] = Entry(key, decoded, None if expires is None else expires - now)
        return out

    def set(self, key: str, value: dict[str, Any], ttl: int) -> None:
        self.cache.set(key, value, timeout=ttl)

    def delete(self, key: str) -> bool:
        return bool(self.cache.delete(key))
