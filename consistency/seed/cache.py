"""Cache side of the seed: fill, count and clear the services' cached entities.

Keys and payloads come from ``consistency.cachekeys`` so the seed writes what
the services (and the cache-parity audit) expect. On Redis the keys are found
by pattern; the local-memory cache cannot list keys, so there the ids come from
the database rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

from django.core.cache import cache

from consistency.cachekeys import CACHED_ENTITIES, CachedEntity
from consistency.seed.generate import Batch
from consistency.seed.sql import alias_for

_CHUNK = 10_000


def write_batch(batch: Batch) -> dict[str, int]:
    """Cache a fresh payload for every cached entity in ``batch``; keys written per prefix."""
    written: dict[str, int] = {}
    for entity in CACHED_ENTITIES:
        rows = batch.rows.get(entity.model, [])
        values = {entity.key(row["id"]): entity.payload(SimpleNamespace(**row)) for row in rows}
        for start in range(0, len(values), _CHUNK):
            chunk = dict(list(values.items())[start : start + _CHUNK]) if len(values) > _CHUNK else values
            cache.set_many(chunk, timeout=entity.ttl)
        written[entity.prefix] = len(values)
    return written


def can_list_keys() -> bool:
    """True on django-redis, which can scan keys by pattern."""
    return hasattr(cache, "iter_keys")


def _db_ids(entity: CachedEntity) -> Iterator[list[str]]:
    manager = entity.model._default_manager.using(alias_for(entity.model))
    ids = manager.values_list("pk", flat=True).order_by().iterator(chunk_size=_CHUNK)
    chunk: list[str] = []
    for pk in ids:
        chunk.append(str(pk))
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def count_keys(entity: CachedEntity) -> int:
    """Entries under ``entity``'s prefix (on locmem: entries for the rows in the database)."""
    if can_list_keys():
        keys = cache.iter_keys(entity.pattern, itersize=_CHUNK)  # type: ignore[attr-defined]
        return sum(1 for _ in keys)
    return sum(len(cache.get_many([entity.key(pk) for pk in chunk])) for chunk in _db_ids(entity))


def clear() -> None:
    """Delete every entry of the cached entities (call before the tables are emptied)."""
    for entity in CACHED_ENTITIES:
        if can_list_keys():
            cache.delete_pattern(entity.pattern, itersize=_CHUNK)  # type: ignore[attr-defined]
        else:
            for chunk in _db_ids(entity):
                cache.delete_many([entity.key(pk) for pk in chunk])
