"""Cache parity: each cached entity's entries against the rows they cache.

An entry is ``stale`` when it differs from the current row's payload
(``consistency.cachekeys``), an ``orphan`` when its row is gone, and an
``invariant`` finding when it cannot be decoded or has no expiry although
entries must expire. A full sweep SCANs each prefix and reads entries and rows
in batches; ``sample=N`` checks N random keys per run instead. Candidates are
re-read after the settle delay and reported only if they still drift.
Repair: refresh a stale (or never-expiring) entry from its row, delete the others.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from consistency.cachekeys import CACHED_ENTITIES, CachedEntity
from consistency.engine.cacheread import CacheReader, Entry, Undecodable
from consistency.engine.declarations import Declaration, DeclarationError, Repair
from consistency.engine.findings import Action, AuditContext, Finding


def _entities(names: Sequence[str]) -> list[CachedEntity]:
    known = {e.name: e for e in CACHED_ENTITIES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DeclarationError(f"unknown cached entities {unknown}; known: {sorted(known)}")
    return [known[n] for n in names] if names else list(CACHED_ENTITIES)


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
    batch_size: int = 1000
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
        ids = [entity.id_of(k) for k in entries]
        manager = entity.model._default_manager.using(entity.alias)
        rows = {entity.key(obj.pk): obj for obj in manager.filter(pk__in=ids)}
        found: dict[str, Finding] = {}
        for key, entry in entries.items():
            finding = self._judge(entity, entry, rows.get(key))
            if finding is not None:
                found[key] = finding
        return found

    def _judge(self, entity: CachedEntity, entry: Entry, row: Any) -> Finding | None:
        table = entity.model._meta.db_table
        if isinstance(entry.value, Undecodable):
            return Finding(
                self.name, "invariant", entry.key, detail=f"undecodable entry: {entry.value.reason}"
            )
        if row is None:
            return Finding(
                self.name,
                "orphan",
                entry.key,
                target=entry.value,
                detail=f"{table}@{entity.alias} has no row {entity.id_of(entry.key)!r}",
            )
        payload = _jsonable(entity.payload(row))
        if entry.value != payload:
            fields = tuple(
                sorted(n for n in set(payload) | set(entry.value) if payload.get(n) != entry.value.get(n))
            )
            return Finding(
                self.name,
                "stale",
                entry.key,
                fields=fields,
                source=payload,
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
                entries = reader.read(wanted[start : start + self.batch_size])
                compared += len(entries)
                found.update(self.classify(entity, entries))
        return compared, found

    def audit(self, ctx: AuditContext) -> tuple[list[Finding], dict[str, Any]]:
        reader = CacheReader(self.cache_alias)
        if self.sample:
            compared, candidates = self._check(reader, reader.sample(self.sample))
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
