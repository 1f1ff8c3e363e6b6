"""Cache parity: each cached entity's entries against the rows they cache.

An entry is ``stale`` when it differs from the current row's payload
(``consistency.cachekeys``), an ``orphan`` when its row is gone, and an
``invariant`` finding when it cannot be decoded or has no expiry although
entries must expire. A full sweep SCANs each prefix and reads entries and rows
in batches (one pipeline and one query a batch); on Redis an entry whose bytes
equal the encoded row agrees without being decoded, so only differing entries
are parsed. ``sample=N`` checks N random keys per run instead. Candidates are
re-read after the settle delay and reported only if they still drift.
Repair: refresh a stale (or never-expiring) entry from its row, delete the others.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from django.db import connections

from consistency.cachekeys import (
    AUTH_USER_FIELDS,
    BACKEND_USER_FIELDS,
    CACHED_ENTITIES,
    SESSION_FIELDS,
    THREAD_FIELDS,
    CachedEntity,
)
from consistency.engine.cacheread import CacheReader, Entry, RawEntry, Undecodable, decode_json
from consistency.engine.cachesql import fingerprint, select_sql
from consistency.engine.declarations import Declaration, DeclarationError, Repair
from consistency.engine.findings import Action, AuditContext, Finding


def _entities(names: Sequence[str]) -> list[CachedEntity]:
    known = {e.name: e for e in CACHED_ENTITIES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DeclarationError(f"unknown cached entities {unknown}; known: {sorted(known)}")
    return [known[n] for n in names] if names else list(CACHED_ENTITIES)


# The model fields each entity's payload reads: rows are loaded as values, not model instances.
_FIELDS = {
    "auth_session": SESSION_FIELDS,
    "auth_user": AUTH_USER_FIELDS,
    "backend_user": BACKEND_USER_FIELDS,
    "backend_thread": THREAD_FIELDS,
}


def payloads(entity: CachedEntity, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The fresh payload of each existing row among ``ids``, by cache key (one query)."""
    manager = entity.model._default_manager.using(entity.alias)
    fields = _FIELDS.get(entity.name)
    if fields is None:
        return {entity.key(obj.pk): entity.payload(obj) for obj in manager.filter(pk__in=ids)}
    pk = entity.model._meta.pk.attname
    rows = manager.filter(pk__in=ids).values(*_with_pk(entity, fields))
    return {entity.key(row[pk]): entity.payload(SimpleNamespace(**row)) for row in rows}


def _with_pk(entity: CachedEntity, fields: Sequence[str] | None) -> tuple[str, ...]:
    pk = entity.model._meta.pk.attname
    return tuple(fields or ()) if pk in (fields or ()) else (*(fields or ()), pk)


def _jsonable(payload: dict[str, Any]) -> dict[str, Any]:
    # What the cache hands back after a JSON round trip (tuples become lists, ...).
    return json.loads(json.dumps(payload, default=str))


@dataclass(frozen=True)
class CacheParity(Declaration):
    """Entries of ``entities`` (names in CACHED_ENTITIES; empty: all) agree with their rows."""

    entities: tuple[str, ...] = ()
    cache_alias: str = "default"
    require_ttl: bool = True
    sample: int | None = None  # None: full sweep
    batch_size: int = 5000
    repair: Repair = Repair.SOURCE_WINS

    kind = "cache"

    @property
    def store(self) -> str:
        return CacheReader(self.cache_alias).store

    def validate(self) -> None:
        _entities(self.entities)
        from django.core.cache import caches

        if self.cache_alias not in caches.settings:
            raise DeclarationError(f"{self.name}: unknown cache alias {self.cache_alias!r}")

    def entity_of(self, key: str) -> CachedEntity | None:
        return next((e for e in _entities(self.entities) if key.startswith(e.prefix)), None)

    def classify(self, entity: CachedEntity, entries: dict[str, Entry]) -> dict[str, Finding]:
        """Findings for ``entries`` of ``entity`` (read their rows in one query)."""
        rows = payloads(entity, [entity.id_of(k) for k in entries])
        found: dict[str, Finding] = {}
        for key, entry in entries.items():
            finding = self._judge(entity, entry, rows.get(key))
            if finding is not None:
                found[key] = finding
        return found

    def classify_raw(
        self, entity: CachedEntity, reader: CacheReader, entries: dict[str, RawEntry]
    ) -> dict[str, Finding]:
        """As ``classify`` for undecoded Redis entries: equal bytes agree without decoding."""
        rows = payloads(entity, [entity.id_of(k) for k in entries])
        found: dict[str, Finding] = {}
        for key, raw in entries.items():
            payload = rows.get(key)
            entry: Entry | None = None
            if payload is None or raw.raw != reader.encode(payload):
                entry = Entry(key, decode_json(raw.raw), raw.ttl)
            finding = self._judge(entity, entry or Entry(key, {}, raw.ttl), payload, same=entry is None)
            if finding is not None:
                found[key] = finding
        return found

    def _judge(
        self, entity: CachedEntity, entry: Entry, payload: dict[str, Any] | None, same: bool = False
    ) -> Finding | None:
        """The finding for ``entry`` against its row's ``payload`` (None: no row); ``same``: known equal."""
        table = entity.model._meta.db_table
        if same:
            pass
        elif isinstance(entry.value, Undecodable):
            return Finding(
                self.name, "invariant", entry.key, detail=f"undecodable entry: {entry.value.reason}"
            )
        elif payload is None:
            return Finding(
                self.name,
                "orphan",
                entry.key,
                target=entry.value,
                detail=f"{table}@{entity.alias} has no row {entity.id_of(entry.key)!r}",
            )
        elif entry.value != (fresh := _jsonable(payload)):
            fields = tuple(
                sorted(n for n in set(fresh) | set(entry.value) if fresh.get(n) != entry.value.get(n))
            )
            return Finding(
                self.name,
                "stale",
                entry.key,
                fields=fields,
                source=fresh,
                target=entry.value,
                detail=f"entry differs from {table}@{entity.alias} in {', '.join(fields)}",
            )
        if self.require_ttl and entry.ttl is None:
            return Finding(
                self.name,
                "invariant",
                entry.key,
                detail=f"no expiry: {entity.name} entries must expire (CACHE_TTL={entity.ttl}s)",
            )
        return None

    def _check(self, reader: CacheReader, keys: Iterable[str]) -> tuple[int, dict[str, Finding]]:
        by_entity: dict[str, list[str]] = {}
        for key in keys:
            entity = self.entity_of(key)
            if entity is not None:
                by_entity.setdefault(entity.name, []).append(key)
        compared, found = 0, {}
        for entity in _entities(self.entities):
            wanted = by_entity.get(entity.name, [])
            for start in range(0, len(wanted), self.batch_size):
                batch = wanted[start : start + self.batch_size]
                if reader.is_redis:
                    raw = reader.read_raw(batch)
                    compared += len(raw)
                    found.update(self.classify_raw(entity, reader, raw))
                else:
                    entries = reader.read(batch)
                    compared += len(entries)
                    found.update(self.classify(entity, entries))
        return compared, found

    def _sweep(self, reader: CacheReader, entity: CachedEntity, progress: Any) -> tuple[int, set[str]]:
        """Redis: (entries compared, keys that may drift) from one SCAN + MGET of the entries and
        one pass over the rows.

        Entries are kept as a 64-bit fingerprint of their bytes, by row id, and compared with
        the fingerprint of the bytes the cache would store for their row: computed inside
        PostgreSQL where it can (``cachesql``), else from the payload in Python. Equal
        fingerprints agree (a collision would hide one drift with probability 2^-64); the
        rest are classified by ``_check``. The rows are streamed when the cache holds a good
        share of the table, and looked up by id in batches otherwise.
        """
        stored: dict[str, int] = {}
        suspects: set[str] = set()
        for keys in reader.scan(entity.prefix, self.batch_size):
            entries = reader.read_raw(keys)
            for key, entry in entries.items():
                stored[entity.id_of(key)] = fingerprint(entry.raw)
                if self.require_ttl and entry.ttl is None:
                    suspects.add(key)
            if progress:
                progress(len(entries))
        compared = len(stored)
        manager = entity.model._default_manager.using(entity.alias)
        fields = _FIELDS.get(entity.name)
        stream = bool(stored) and fields is not None and len(stored) * 20 >= manager.count()
        in_python = list(stored)
        if stored and fields and connections[entity.alias].vendor == "postgresql":
            in_python = []
            for row_id, fp in self._sql_fingerprints(entity, fields, list(stored), stream):
                if row_id not in stored:
                    continue
                if fp is None:
                    in_python.append(row_id)
                elif stored.pop(row_id) != fp:
                    suspects.add(entity.key(row_id))
        elif stream and fields:
            in_python = []
            pk = entity.model._meta.pk.attname
            for row in manager.order_by().values(*_with_pk(entity, fields)).iterator(chunk_size=10_000):
                digest = stored.pop(str(row[pk]), None)
                encoded = reader.encode(entity.payload(SimpleNamespace(**row)))
                if digest is not None and digest != fingerprint(encoded):
                    suspects.add(entity.key(row[pk]))
        for start in range(0, len(in_python), self.batch_size):
            for key, payload in payloads(entity, in_python[start : start + self.batch_size]).items():
                if stored.pop(entity.id_of(key)) != fingerprint(reader.encode(payload)):
                    suspects.add(key)
        suspects.update(entity.key(row_id) for row_id in stored)  # entries without a row
        return compared, suspects

    def _sql_fingerprints(
        self, entity: CachedEntity, fields: Sequence[str], ids: list[str], stream: bool
    ) -> Iterator[tuple[str, int | None]]:
        """(row id, fingerprint or None) from PostgreSQL: every row, or the rows of ``ids``."""
        sql = select_sql(entity, fields, by_id=not stream)
        if sql is None:  # a field type without an SQL form: every row in Python
            yield from ((i, None) for i in ids)
            return
        connection = connections[entity.alias]
        if stream:
            with connection.chunked_cursor() as cursor:
                cursor.execute(sql)
                while rows := cursor.fetchmany(20_000):
                    yield from rows
            return
        to_pk = entity.model._meta.pk.to_python
        for start in range(0, len(ids), self.batch_size):
            with connection.cursor() as cursor:
                cursor.execute(sql, [[to_pk(i) for i in ids[start : start + self.batch_size]]])
                yield from cursor.fetchall()

    def audit(self, ctx: AuditContext) -> tuple[list[Finding], dict[str, Any]]:
        reader = CacheReader(self.cache_alias)
        if self.sample:
            compared, candidates = self._check(reader, reader.sample(self.sample))
        elif reader.is_redis:
            compared, suspects = 0, set()
            for entity in _entities(self.entities):
                n, found_keys = self._sweep(reader, entity, ctx.progress)
                compared += n
                suspects |= found_keys
            _, candidates = self._check(reader, sorted(suspects))
        else:
            compared, candidates = 0, {}
            for entity in _entities(self.entities):
                for keys in reader.scan(entity.prefix, self.batch_size):
                    n, found = self._check(reader, keys)
                    compared += n
                    candidates.update(found)
                    if ctx.progress:
                        ctx.progress(n)
        if candidates and ctx.settle:
            time.sleep(ctx.settle)
        _, again = self._check(reader, candidates) if candidates else (0, {})
        confirmed = [f for k, f in again.items() if candidates[k].kind == f.kind]
        figures = {
            "compared": compared,
            "candidates": len(candidates),
            "in_flight": len(candidates) - len(confirmed),
            "mode": f"sample {self.sample}" if self.sample else "full",
        }
        return sorted(confirmed, key=lambda f: f.key), figures

    def plan_repair(self, findings: Sequence[Finding]) -> list[Action]:
        store = CacheReader(self.cache_alias).store
        actions = []
        for f in findings:
            refresh = f.kind == "stale" or (f.kind == "invariant" and f.detail.startswith("no expiry"))
            act = "refresh" if refresh else "delete"
            actions.append(Action(self.name, f.kind, f.key, act, "cache", store))
        return actions

    def apply_repair(self, action: Action) -> str:
        reader = CacheReader(self.cache_alias)
        entity = self.entity_of(action.key)
        if entity is None:
            return "not a key of this check; nothing done"
        row = entity.model._default_manager.using(entity.alias).filter(pk=entity.id_of(action.key)).first()
        if action.action == "refresh" and row is not None:
            reader.set(action.key, entity.payload(row), entity.ttl)
            return "refreshed from the row"
        return "deleted" if reader.delete(action.key) else "already gone"

    def verify_repair(self, action: Action) -> bool:
        reader = CacheReader(self.cache_alias)
        entity = self.entity_of(action.key)
        entries = reader.read([action.key])
        return entity is None or not self.classify(entity, entries)

    def transaction_alias(self, action: Action) -> str | None:
        return None
