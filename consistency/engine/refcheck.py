"""Reference parity (orphans, across databases) and invariants inside one store.

Orphans on one alias are found by an anti-join in the database. Across aliases
the parent's keys are streamed once into a sorted NumPy array of 64-bit
hashes (8 bytes a row), the child's distinct references are looked up in it,
and only the misses are checked exactly, by key, after the settle delay.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from django.db import connections, models

from consistency.engine.declarations import Invariant, ReferenceParity
from consistency.engine.findings import Finding
from consistency.engine.redact import redact

Progress = Callable[[int], None]
_BATCH = 10_000


def _h(value: Any) -> int:
    digest = hashlib.blake2b(str(value).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _parent_hashes(model: type[models.Model], alias: str, key: str, progress: Progress | None) -> np.ndarray:
    chunks: list[np.ndarray] = []
    buffer: list[int] = []
    for value in model._default_manager.using(alias).values_list(key, flat=True).iterator(chunk_size=_BATCH):
        buffer.append(_h(value))
        if len(buffer) >= _BATCH:
            chunks.append(np.array(buffer, dtype=np.int64))
            if progress:
                progress(len(buffer))
            buffer = []
    if buffer:
        chunks.append(np.array(buffer, dtype=np.int64))
        if progress:
            progress(len(buffer))
    hashes = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    hashes.sort()
    return hashes


def _existing(model: type[models.Model], alias: str, key: str, values: list[Any]) -> set[str]:
    found: set[str] = set()
    manager = model._default_manager.using(alias)
    for start in range(0, len(values), 1000):
        batch = values[start : start + 1000]
        found.update(str(v) for v in manager.filter(**{f"{key}__in": batch}).values_list(key, flat=True))
    return found


def find_orphans(
    decl: ReferenceParity, *, settle: float = 0.0, progress: Progress | None = None
) -> tuple[list[Finding], dict[str, int]]:
    """Child rows whose reference has no parent row; confirmed after ``settle`` seconds."""
    child = decl.child.resolve_model(decl.name)
    child_alias = decl.child.resolve_alias(decl.name, child)
    parent = decl.parent.resolve_model(decl.name)
    parent_alias = decl.parent.resolve_alias(decl.name, parent)
    fk = child._meta.get_field(decl.field)
    attname = fk.attname  # type: ignore[union-attr]
    parent_key = parent._meta.pk.name if decl.parent_key == "pk" else decl.parent_key
    children = child._default_manager.using(child_alias).exclude(**{f"{attname}__isnull": True})

    if child_alias == parent_alias and connections[child_alias].vendor == connections[parent_alias].vendor:
        parents = parent._default_manager.using(parent_alias).filter(**{parent_key: models.OuterRef(attname)})
        missing_refs = set(
            children.annotate(_has_parent=models.Exists(parents))
            .filter(_has_parent=False)
            .values_list(attname, flat=True)
            .distinct()
        )
        compared = children.count()
    else:
        hashes = _parent_hashes(parent, parent_alias, parent_key, progress)
        missing_refs = set()
        compared = 0
        refs = children.values_list(attname, flat=True).distinct().order_by()
        batch: list[Any] = []
        for value in refs.iterator(chunk_size=_BATCH):
            batch.append(value)
            if len(batch) >= _BATCH:
                missing_refs |= _misses(hashes, batch)
                compared += len(batch)
                batch = []
        missing_refs |= _misses(hashes, batch)
        compared += len(batch)
        # A hash hit could be a collision: the misses are exact, the hits are near-certain.
        missing_refs -= _existing(parent, parent_alias, parent_key, list(missing_refs))
    if settle > 0 and missing_refs:
        time.sleep(settle)
    # Confirm: the parent is still absent, and list the children that still point at it.
    missing_refs -= _existing(parent, parent_alias, parent_key, list(missing_refs))
    findings: list[Finding] = []
    if missing_refs:
        rows = children.filter(**{f"{attname}__in": list(missing_refs)}).values("pk", attname)
        for row in rows.iterator(chunk_size=_BATCH):
            findings.append(
                Finding(
                    check=decl.name,
                    kind="orphan",
                    key=str(row["pk"]),
                    fields=(decl.field,),
                    source=redact({attname: row[attname]}),
                    target=None,
                    detail=f"{child._meta.db_table}.{fk.column} = {row[attname]!r} has no "  # type: ignore[union-attr]
                    f"{parent._meta.db_table} row on {parent_alias}",
                )
            )
    return findings, {"compared": compared, "candidates": len(missing_refs)}


def _misses(hashes: np.ndarray, values: list[Any]) -> set[Any]:
    if not values:
        return set()
    probe = np.array([_h(v) for v in values], dtype=np.int64)
    at = np.searchsorted(hashes, probe)
    at[at >= len(hashes)] = 0
    hit = hashes[at] == probe if len(hashes) else np.zeros(len(values), dtype=bool)
    return {v for v, ok in zip(values, hit.tolist(), strict=True) if not ok}


def find_violations(decl: Invariant, *, settle: float = 0.0) -> tuple[list[Finding], dict[str, int]]:
    """Rows that break an invariant, reported only if they still break it after ``settle``."""
    model = decl.side.resolve_model(decl.name)
    alias = decl.side.resolve_alias(decl.name, model)

    def collect() -> dict[str, dict[str, Any]]:
        qs = model._default_manager.using(alias).all()
        out: dict[str, dict[str, Any]] = {}
        for row in _rows(decl.violations(qs)):
            out[str(row["key"])] = row
        return out

    first = collect()
    if settle > 0 and first:
        time.sleep(settle)
    confirmed = collect() if first else {}
    findings = [
        Finding(
            check=decl.name,
            kind="invariant",
            key=key,
            fields=decl.fields,
            source=redact({k: v for k, v in row.items() if k not in ("key", "detail")}),
            target=None,
            detail=str(row.get("detail", decl.description)),
        )
        for key, row in sorted(confirmed.items())
        if key in first
    ]
    return findings, {"compared": model._default_manager.using(alias).count(), "candidates": len(first)}


def _rows(found: Iterable[Any]) -> Iterable[dict[str, Any]]:
    for row in found:
        yield row if isinstance(row, dict) else dict(row)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
