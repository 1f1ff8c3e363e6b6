"""Row parity: find every row that differs between two sides, at the cost of one scan each.

1. Both sides stream (fingerprint, payload) pairs in parallel into an IBLT each
   (the fingerprint hashes the key and the normalised fields).
2. Subtracting the tables cancels every row both sides hold; peeling the rest
   gives the fingerprints only one side holds. If the drift is larger than the
   table decodes, the scan is repeated in fingerprint partitions.
3. Only those rows are fetched (by key for integer keys, else by one filtered
   scan on the key hash) and classified by key: missing, extra or mismatch.
4. Settle and confirm: after ``settle`` seconds each candidate is re-read by
   key on both sides and reported only if it still differs. A row whose
   change time is after the audit began is counted 'in flight', not drift.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from django.db import connections

from consistency.engine.declarations import BoundRowParity
from consistency.engine.findings import Finding
from consistency.engine.iblt import IBLT, MAX_CELLS
from consistency.engine.rowside import Row, RowSide

Progress = Callable[[int], None]
T = TypeVar("T")


@dataclass
class RowDiffStats:
    compared: int = 0
    source_rows: int = 0
    target_rows: int = 0
    segments: int = 0
    rows_fetched: int = 0
    candidates: int = 0
    in_flight: int = 0
    transient: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def make_sides(bound: BoundRowParity) -> tuple[RowSide, RowSide]:
    both_pg = all(connections[a].vendor == "postgresql" for a in (bound.source_alias, bound.target_alias))
    dialect = "sql" if both_pg else "python"
    source_fields = [(f.label, f.source, f.normalizer) for f in bound.fields]
    target_fields = [(f.label, f.target, f.normalizer) for f in bound.fields]
    source = RowSide(
        bound.source_model, bound.source_alias, bound.source_key, source_fields, bound.source_updated, dialect
    )
    target = RowSide(
        bound.target_model, bound.target_alias, bound.target_key, target_fields, bound.target_updated, dialect
    )
    return source, target


def _fill(side: RowSide, tables: list[IBLT], since: dt.datetime | None, progress: Progress | None) -> int:
    """Stream ``side`` once into ``tables`` (one per fingerprint partition); runs in its own thread."""
    rows = 0
    parts = len(tables)
    try:
        for fps, payloads in side.stream(since):
            rows += len(fps)
            if progress is not None:
                progress(len(fps))
            if parts == 1:
                tables[0].add(fps, payloads)
                continue
            which = fps.view(np.uint64) % np.uint64(parts)
            for part, table in enumerate(tables):
                keep = which == part
                table.add(fps[keep], payloads[keep])
        return rows
    finally:
        connections[side.alias].close()


def _scan(
    source: RowSide,
    target: RowSide,
    since: dt.datetime | None,
    progress: Progress | None,
    stats: RowDiffStats,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Fingerprints only in the source and only in the target.

    The first scan's table decodes drift of a few percent of the rows. When the
    drift is larger, the failed table still tells roughly how large it is, and
    one more scan with tables sized for that (split into partitions filled in
    the same scan when it exceeds MAX_CELLS) decodes it.
    """
    expected = max(source.estimate_rows(), target.estimate_rows(), 1)
    cells, parts = IBLT.cells_for_rows(expected), 1
    for _attempt in range(4):
        src_tables = [IBLT(cells) for _ in range(parts)]
        tgt_tables = [IBLT(cells) for _ in range(parts)]
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="consistency-scan") as pool:
            src = pool.submit(_fill, source, src_tables, since, progress)
            tgt = pool.submit(_fill, target, tgt_tables, since, progress)
            stats.source_rows, stats.target_rows = src.result(), tgt.result()
        stats.segments += parts
        diffs = [a.subtract(b) for a, b in zip(src_tables, tgt_tables, strict=True)]
        decoded = [d.decode() for d in diffs]
        if all(d.complete for d in decoded):
            return [i for d in decoded for i in d.left], [i for d in decoded for i in d.right]
        drift = sum(d.estimate_items() for d in diffs)
        needed = 2 * drift  # cells per sub-table: twice the items decodes with room to spare
        parts = max(1, -(-needed // MAX_CELLS))
        cells = min(MAX_CELLS, max(cells * 2, -(-needed // parts)))
    raise RuntimeError(f"could not separate the drift after 4 scans (about {drift} differing rows)")


def _parallel(left: Callable[..., T], right: Callable[..., T], *args: object) -> tuple[T, T]:
    """Run ``left(*args)`` and ``right(*args)`` in two threads, each with its own connections."""

    def call(fn: Callable[..., T]) -> T:
        try:
            return fn(*args)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="consistency-side") as pool:
        a, b = pool.submit(call, left), pool.submit(call, right)
        return a.result(), b.result()


def _fetch(side: RowSide, items: list[tuple[int, int]], since: dt.datetime | None) -> dict[str, Row]:
    try:
        wanted = {fp for fp, _ in items}
        rows = side.rows_by_payloads(sorted({payload for _, payload in items}), since)
        return {row.key: row for row in rows if row.fp in wanted}
    finally:
        connections[side.alias].close()


def _differing(source: Row | None, target: Row | None, labels: list[str]) -> list[str]:
    if source is None or target is None:
        return []
    return [label for label, a, b in zip(labels, source.norm, target.norm, strict=True) if a != b]


def _kind(source: Row | None, target: Row | None) -> str:
    if target is None:
        return "missing"
    if source is None:
        return "extra"
    return "mismatch"


def diff_rows(
    bound: BoundRowParity,
    *,
    started_at: dt.datetime,
    settle: float = 0.0,
    since: dt.datetime | None = None,
    progress: Progress | None = None,
) -> tuple[list[Finding], RowDiffStats]:
    """Compare both sides of ``bound``; return confirmed findings and the figures."""
    stats = RowDiffStats()
    source, target = make_sides(bound)
    if source.dialect == "sql":
        # One aggregate scan per side first: identical tables cost about one scan.
        digests = _parallel(source.aggregate, target.aggregate, since)
        (stats.source_rows, src_digest), (stats.target_rows, tgt_digest) = digests
        stats.segments = 1
        if stats.source_rows == stats.target_rows and src_digest == tgt_digest:
            stats.compared = stats.source_rows
            if progress is not None:
                progress(stats.source_rows + stats.target_rows)
            return [], stats
    only_source, only_target = _scan(source, target, since, progress, stats)
    stats.compared = max(stats.source_rows, stats.target_rows)
    if not only_source and not only_target:
        return [], stats
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="consistency-fetch") as pool:
        src_f = pool.submit(_fetch, source, only_source, since)
        tgt_f = pool.submit(_fetch, target, only_target, since)
        first_source, first_target = src_f.result(), tgt_f.result()
    keys = sorted(set(first_source) | set(first_target))
    stats.rows_fetched = len(first_source) + len(first_target)
    stats.candidates = len(keys)
    if settle > 0:
        time.sleep(settle)
    # Re-read every candidate by key on both sides: the confirmation, and, for an
    # incremental audit, the other side's row even when it did not change.
    now_source = source.rows_by_keys(keys)
    now_target = target.rows_by_keys(keys)
    labels = [f.label for f in bound.fields]
    secret = {f.label for f in bound.fields if f.secret}
    findings = []
    for key in keys:
        src, tgt = now_source.get(key), now_target.get(key)
        if src is None and tgt is None:
            stats.transient += 1
            continue
        if src is not None and tgt is not None and src.fp == tgt.fp:
            stats.transient += 1
            continue
        if _moved_since(src, started_at) or _moved_since(tgt, started_at):
            stats.in_flight += 1
            continue
        if _changed(first_source.get(key), src) or _changed(first_target.get(key), tgt):
            stats.in_flight += 1  # it moved between the scan and the re-read
            continue
        findings.append(
            Finding(
                check=bound.decl.name,
                kind=_kind(src, tgt),
                key=key,
                fields=tuple(_differing(src, tgt, labels)),
                source=_shown(src, secret),
                target=_shown(tgt, secret),
            )
        )
    return findings, stats


def _moved_since(row: Row | None, started_at: dt.datetime) -> bool:
    return row is not None and row.updated is not None and row.updated >= started_at


def _changed(first: Row | None, now: Row | None) -> bool:
    if first is None:
        return False  # not seen in the scan (it matched, or it is the absent side)
    return now is None or first.fp != now.fp


def _shown(row: Row | None, secret: set[str]) -> dict[str, object] | None:
    if row is None:
        return None
    return {label: ("<redacted>" if label in secret else value) for label, value in row.raw.items()}
