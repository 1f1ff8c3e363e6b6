"""Row parity: find every row that differs between two sides, at the cost of one scan each.

0. Adaptive first pass (``strategy``, chosen by ``first_pass`` from this check's
   history): when the previous finished run found no drift and no drift of the
   check is open, each side first runs one plain aggregate (row count and XOR of
   the row fingerprints), both in parallel. When they agree the audit stops
   there: identical tables cost about the floor. When the last run found drift,
   or the aggregates disagree, the sides are streamed (steps 1-4). The Python
   dialect always streams.
1. Both sides are scanned once, in parallel. Each row yields a fingerprint (a
   hash of its key and normalised fields, computed by PostgreSQL) and a locator
   (its TID; in the Python dialect its key payload). Fingerprints go into an
   IBLT per side; (fingerprint, locator) records are spilled to a temporary
   file per side, so memory does not grow with the table.
2. Subtracting the tables cancels every row both sides hold; peeling the rest
   gives the fingerprints only one side holds. If the drift is larger than the
   table decodes, the spill files (not the databases) are read again into
   larger tables, split into fingerprint partitions.
3. Each side looks its fingerprints up in its spill file and fetches those rows
   by TID, still inside the scan's REPEATABLE READ snapshot: no second scan,
   whatever the key type. Rows are classified by key: missing, extra, mismatch.
4. Settle and confirm: after ``settle`` seconds each candidate is re-read by
   key on both sides and reported only if it still differs. A row whose
   change time is after the audit began is counted 'in flight', not drift.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import connections

from consistency.engine.declarations import BoundRowParity
from consistency.engine.findings import Finding
from consistency.engine.rowside import Row, RowSide

if TYPE_CHECKING:
    import numpy as np

    from consistency.engine.iblt import IBLT
    from consistency.engine.rowside import Chunk

Progress = Callable[[int], None]
_BLOCK_ROWS = 1 << 18  # records read back from a spill file at a time
_RETRY_BUDGET = 48 << 20  # bytes of IBLTs held at once while a retry re-reads the spill files
_ATTEMPTS = 4


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
    strategy: str = "stream"  # aggregate | aggregate+stream | stream: the passes that ran
    extra: dict[str, int] = field(default_factory=dict)


STRATEGIES = ("aggregate", "stream")


def first_pass(check_name: str) -> str:
    """``aggregate`` when this check's last finished run found no drift and none of its drift is open;
    ``stream`` when it did (the aggregate would only disagree and add a scan).

    A check never run before starts with the aggregate: an audit is expected to find the stores agreeing.
    """
    from consistency.models import CheckRun, Drift

    last = (
        CheckRun.objects.filter(check_name=check_name, status__in=["ok", "drift"])
        .order_by("-id")
        .values_list("status", flat=True)
        .first()
    )
    if last == "drift":
        return "stream"
    unresolved = [Drift.Status.OPEN, Drift.Status.ACKNOWLEDGED, Drift.Status.MUTED]
    if Drift.objects.filter(check_name=check_name, status__in=unresolved).exists():
        return "stream"
    return "aggregate"


def _aggregates(source: RowSide, target: RowSide, since: dt.datetime | None) -> list[tuple[int, int]]:
    """Both sides' (rows, digest), each in its own thread and connection."""

    def one(side: RowSide) -> tuple[int, int]:
        try:
            return side.aggregate(since)
        finally:
            connections[side.alias].close()

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="consistency-aggregate") as pool:
        futures = [pool.submit(one, side) for side in (source, target)]
        return [f.result() for f in futures]


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


class Spill:
    """One side's (fingerprint, locator) records, in scan order, in two temporary files.

    The files live in the page cache and on disk, not in the process: a 10M-row
    side spills 140 MB there and keeps none of it resident.
    """

    def __init__(self, locator_size: int) -> None:
        self.locator_size = locator_size
        self.fps = tempfile.TemporaryFile(prefix="consistency-fp-")  # noqa: SIM115 - close()
        self.locators = tempfile.TemporaryFile(prefix="consistency-loc-")  # noqa: SIM115 - close()
        self.rows = 0

    def write(self, fps: np.ndarray, locators: bytes) -> None:
        self.fps.write(fps.astype("<i8", copy=False).tobytes())
        self.locators.write(locators)
        self.rows += len(fps)

    def blocks(self) -> Iterator[np.ndarray]:
        """The fingerprints again, a block at a time."""
        import numpy as np

        self.fps.seek(0)
        while data := self.fps.read(8 * _BLOCK_ROWS):
            yield np.frombuffer(data, dtype="<i8")

    def locate(self, wanted: list[int]) -> tuple[list[int], list[bytes]]:
        """(fingerprint, locator) of every record whose fingerprint is in ``wanted``.

        A 64K-entry bitmap of the wanted fingerprints' low 16 bits (read through a
        strided view, no copy) rules out almost every record; only the few left
        are compared exactly.
        """
        import numpy as np

        if not wanted:
            return [], []
        keys = np.array(sorted(set(wanted)), dtype="<i8")
        bitmap = np.zeros(1 << 16, dtype=bool)
        bitmap[keys.view("<u2")[::4]] = True
        found_fps: list[int] = []
        found: list[bytes] = []
        size = self.locator_size
        for number, block in enumerate(self.blocks()):
            maybe = np.flatnonzero(bitmap[block.view("<u2")[::4]])
            if not maybe.size:
                continue
            exact = maybe[np.isin(block[maybe], keys)]
            for position in exact.tolist():
                self.locators.seek((number * _BLOCK_ROWS + position) * size)
                found.append(self.locators.read(size))
                found_fps.append(int(block[position]))
        return found_fps, found

    def close(self) -> None:
        self.fps.close()
        self.locators.close()


@dataclass
class _Scanned:
    rows: int
    table: IBLT
    spills: list[Spill]
    connections: int


class _Part:
    """What one connection of a side read: its IBLT and its spill file."""

    def __init__(self, side: RowSide, cells: int) -> None:
        from consistency.engine.iblt import IBLT

        self.table = IBLT(cells)
        self.spill = Spill(side.locator_size)

    def add(self, chunks: Iterator[Chunk], progress: Progress | None) -> None:
        for fps, locators in chunks:
            self.table.add(fps)
            self.spill.write(fps, locators)
            if progress is not None:
                progress(len(fps))


def _read_units(
    side: RowSide,
    part: _Part,
    units: Iterator[tuple[str, list[Any]]],
    lock: threading.Lock,
    progress: Progress | None,
) -> None:
    """Take the plan's units one at a time until none is left (the connections share them)."""
    while True:
        with lock:
            unit = next(units, None)
        if unit is None:
            return
        part.add(side.stream_unit(*unit), progress)


def _helper(
    side: RowSide,
    part: _Part,
    snapshot: str,
    units: Iterator[tuple[str, list[Any]]],
    lock: threading.Lock,
    progress: Progress | None,
) -> None:
    try:
        with side.joined(snapshot):
            _read_units(side, part, units, lock, progress)
    finally:
        connections[side.alias].close()


def _side(
    side: RowSide,
    cells: int,
    since: dt.datetime | None,
    progress: Progress | None,
    scanned: Future[_Scanned],
    wanted: Future[list[int] | None],
) -> dict[str, Row]:
    """One side, in its own thread: scan into IBLTs and spill files, report, wait for the
    fingerprints to fetch, fetch them in the same snapshot; return the fetched rows by key."""
    parts: list[_Part] = []
    try:
        with side.snapshot():
            parts.append(_Part(side, cells))
            if side.dialect != "sql":
                parts[0].add(side.stream(since), progress)
            else:
                plan = side.plan(since)
                units, lock = iter(plan.units), threading.Lock()
                parts += [_Part(side, cells) for _ in range(plan.workers - 1)]
                with ThreadPoolExecutor(
                    max_workers=len(parts), thread_name_prefix="consistency-part"
                ) as pool:
                    helpers = [
                        pool.submit(_helper, side, part, plan.snapshot or "", units, lock, progress)
                        for part in parts[1:]
                    ]
                    _read_units(side, parts[0], units, lock, progress)
                    for helper in helpers:
                        helper.result()
            table = parts[0].table
            for part in parts[1:]:
                table.merge(part.table)
            rows = sum(p.spill.rows for p in parts)
            scanned.set_result(_Scanned(rows, table, [p.spill for p in parts], len(parts)))
            fps = wanted.result()
            if not fps:
                return {}
            found_fps: set[int] = set()
            locators: list[bytes] = []
            for part in parts:
                got_fps, got = part.spill.locate(fps)
                found_fps.update(got_fps)
                locators += got
            fetched = side.rows_by_locators(locators, since)
        return {row.key: row for row in fetched if row.fp in found_fps}
    except BaseException as exc:
        if not scanned.done():
            scanned.set_exception(exc)
        raise
    finally:
        for part in parts:
            part.spill.close()
        connections[side.alias].close()


def _decode(a: _Scanned, b: _Scanned, stats: RowDiffStats) -> tuple[list[int], list[int]]:
    """Fingerprints only in ``a`` and only in ``b``.

    The first tables decode drift of a few percent of the rows. When the drift
    is larger, the failed table still tells roughly how large it is, and the
    spill files are read again into tables sized for that, split into
    fingerprint partitions (a batch of partitions per pass over the files).
    """
    from consistency.engine.iblt import RETRY_CELLS, K

    stats.segments = 1
    diff = a.table.subtract(b.table)
    decoded = diff.decode()
    if decoded.complete:
        return decoded.left, decoded.right
    drift = diff.estimate_items() + len(decoded.left) + len(decoded.right)
    for _attempt in range(_ATTEMPTS):
        needed = 2 * drift  # cells per sub-table: twice the items decodes with room to spare
        parts = max(1, -(-needed // RETRY_CELLS))
        cells = min(RETRY_CELLS, max(a.table.m * 2, -(-needed // parts)))
        per_pass = max(1, _RETRY_BUDGET // (2 * 2 * K * 8 * cells))
        left: list[int] = []
        right: list[int] = []
        remaining = 0
        for first in range(0, parts, per_pass):
            batch = range(first, min(parts, first + per_pass))
            tables = [_refill(s, batch, parts, cells) for s in (a, b)]
            for ta, tb in zip(*tables, strict=True):
                part_diff = ta.subtract(tb)
                got = part_diff.decode()
                left += got.left
                right += got.right
                if not got.complete:
                    remaining += part_diff.estimate_items()
        stats.segments += parts
        if not remaining:
            return left, right
        drift = max(drift * 2, remaining + len(left) + len(right))
    raise RuntimeError(
        f"could not separate the drift after {_ATTEMPTS} retries (about {drift} differing rows)"
    )


def _refill(scanned: _Scanned, batch: range, parts: int, cells: int) -> list[IBLT]:
    """IBLTs for fingerprint partitions ``batch`` (of ``parts``), from one side's spill file."""
    import numpy as np

    from consistency.engine.iblt import IBLT

    tables = [IBLT(cells) for _ in batch]
    for block in (b for spill in scanned.spills for b in spill.blocks()):
        which = block.view(np.uint64) % np.uint64(parts) if parts > 1 else None
        for table, part in zip(tables, batch, strict=True):
            table.add(block if which is None else block[which == part])
    return tables


def _scan(
    source: RowSide,
    target: RowSide,
    since: dt.datetime | None,
    progress: Progress | None,
    stats: RowDiffStats,
) -> tuple[dict[str, Row], dict[str, Row]]:
    """Scan both sides once and fetch the rows only one side holds, by key."""
    from consistency.engine.iblt import IBLT

    cells = IBLT.cells_for_rows(max(source.estimate_rows(), target.estimate_rows(), 1))
    scanned: list[Future[_Scanned]] = [Future(), Future()]
    wanted: list[Future[list[int] | None]] = [Future(), Future()]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="consistency-scan") as pool:
        workers = [
            pool.submit(_side, side, cells, since, progress, scanned[i], wanted[i])
            for i, side in enumerate((source, target))
        ]
        try:
            a, b = scanned[0].result(), scanned[1].result()
            stats.source_rows, stats.target_rows = a.rows, b.rows
            stats.extra["connections"] = a.connections + b.connections
            only_source, only_target = _decode(a, b, stats)
            wanted[0].set_result(only_source)
            wanted[1].set_result(only_target)
        finally:
            for future in wanted:  # release a side still waiting when the other one failed
                if not future.done():
                    future.set_result(None)
        found_source, found_target = workers[0].result(), workers[1].result()
    return found_source, found_target


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
    strategy: str = "stream",
) -> tuple[list[Finding], RowDiffStats]:
    """Compare both sides of ``bound``; return confirmed findings and the figures.

    ``strategy`` ``aggregate`` runs the aggregate pass first (SQL dialect), ``stream`` does not.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown row parity strategy {strategy!r}; expected one of {STRATEGIES}")
    stats = RowDiffStats()
    source, target = make_sides(bound)
    if strategy == "aggregate" and source.dialect == "sql":
        (stats.source_rows, src_digest), (stats.target_rows, tgt_digest) = _aggregates(source, target, since)
        stats.segments = 1
        if stats.source_rows == stats.target_rows and src_digest == tgt_digest:
            stats.strategy = "aggregate"
            stats.compared = stats.source_rows
            if progress is not None:
                progress(stats.source_rows + stats.target_rows)
            return [], stats
        stats.strategy = "aggregate+stream"
    first_source, first_target = _scan(source, target, since, progress, stats)
    stats.compared = max(stats.source_rows, stats.target_rows)
    keys = sorted(set(first_source) | set(first_target))
    stats.rows_fetched = len(first_source) + len(first_target)
    stats.candidates = len(keys)
    if not keys:
        return [], stats
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


def _shown(row: Row | None, secret: set[str]) -> dict[str, Any] | None:
    if row is None:
        return None
    return {label: ("<redacted>" if label in secret else value) for label, value in row.raw.items()}
