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
from consistency.engine.tablesql import Table

Progress = Callable[[int], None]
_BATCH = 10_000


def _h(value: Any) -> int:
    digest = hashlib.blake2b(str(value).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _parent_hashes(parent: Table, key: models.Field, progress: Progress | None) -> np.ndarray:
    chunks: list[np.ndarray] = []
    buffer: list[int] = []
    for (value,) in parent.select([key], chunked=True):
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


def _existing(parent: Table, key: models.Field, values: list[Any]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(values), 1000):
        where, params = parent.where_in(key, values[start : start + 1000])
        found.update(str(v) for (v,) in parent.select([key], where, params))
    return found


def _absent(refs: set[Any], parent: Table, key: models.Field) -> set[Any]:
    """The references in ``refs`` that no parent row holds (compared as text, like the hashes)."""
    found = _existing(parent, key, list(refs))
    return {ref for ref in refs if str(ref) not in found}


def find_orphans(
    decl: ReferenceParity, *, settle: float = 0.0, progress: Progress | None = None
) -> tuple[list[Finding], dict[str, int]]:
    """Child rows whose reference has no parent row; confirmed after ``settle`` seconds."""
    child_model = decl.child.resolve_model(decl.name)
    child_alias = decl.child.resolve_alias(decl.name, child_model)
    parent_model = decl.parent.resolve_model(decl.name)
    parent_alias = decl.parent.resolve_alias(decl.name, parent_model)
    child, parent = Table(child_model, child_alias), Table(parent_model, parent_alias)
    fk: models.Field = child_model._meta.get_field(decl.field)  # type: ignore[assignment]
    key: models.Field = (
        parent_model._meta.pk if decl.parent_key == "pk" else parent_model._meta.get_field(decl.parent_key)  # type: ignore[assignment]
    )
    not_null = f" WHERE {child.col(fk)} IS NOT NULL"

    if child_alias == parent_alias and connections[child_alias].vendor == connections[parent_alias].vendor:
        # One anti-join in the database; the aliases keep a self-reference apart.
        anti_join = (
            f"SELECT DISTINCT {child.col(fk, 'c')} FROM {child.name} AS c"
            f" WHERE {child.col(fk, 'c')} IS NOT NULL AND NOT EXISTS"
            f" (SELECT 1 FROM {parent.name} AS p WHERE {parent.col(key, 'p')} = {child.col(fk, 'c')})"
        )
        missing_refs = {ref for (ref,) in child.rows(anti_join, [fk])}
        with child.connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {child.name}{not_null}", [])
            compared = int(cursor.fetchone()[0])
    else:
        hashes = _parent_hashes(parent, key, progress)
        missing_refs = set()
        compared = 0
        batch: list[Any] = []
        for (value,) in child.rows(
            f"SELECT DISTINCT {child.col(fk)} FROM {child.name}{not_null}", [fk], chunked=True
        ):
            batch.append(value)
            if len(batch) >= _BATCH:
                missing_refs |= _misses(hashes, batch)
                compared += len(batch)
                batch = []
        missing_refs |= _misses(hashes, batch)
        compared += len(batch)
        # A hash hit could be a collision: the misses are exact, the hits are near-certain.
        missing_refs = _absent(missing_refs, parent, key)
    if settle > 0 and missing_refs:
        time.sleep(settle)
    # Confirm: the parent is still absent, and list the children that still point at it.
    missing_refs = _absent(missing_refs, parent, key)
    findings: list[Finding] = []
    refs = list(missing_refs)
    pk = child_model._meta.pk
    for start in range(0, len(refs), 1000):
        where, params = child.where_in(fk, refs[start : start + 1000])
        for row_pk, ref in child.select([pk, fk], where, params):
            findings.append(
                Finding(
                    check=decl.name,
                    kind="orphan",
                    key=str(row_pk),
                    fields=(decl.field,),
                    source=redact({fk.attname: ref}),
                    target=None,
                    detail=f"{child_model._meta.db_table}.{fk.column} = {ref!r} has no "
                    f"{parent_model._meta.db_table} row on {parent_alias}",
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
