"""Row parity: find every row that differs between two sides, at the cost of one scan each.

0. Adaptive first pass (``strategy``, chosen by ``first_pass`` from this check's
   history): when the previous finished run found no drift and no drift of the
   check is open, each side first runs one plain aggregate (row count and XOR of
   the row fingerprints), both in parallel. When they agree the audit stops
   there: identical tables cost about the floor. A side proven unchanged since
   the last audit's summary of it (``rangecache``: one scan of the rows' xmin,
   no hashing) skips its aggregate. When the last run found drift,
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
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from consistency.engine.declarations import BoundRowParity
from consistency.engine.findings import Finding
from consistency.engine.rowside import Row, RowSide

if TYPE_CHECKING:
    import numpy as np

    from consistency.engine.iblt import IBLT
    from consistency.engine.rangecache import Mark, SideCache, Unit
    from consistency.engine.rowside import Chunk, Delta, ScanPlan

logger = logging.getLogger("consistency.audit")
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
    strategy: str = "stream"  # the passes that ran: aggregate or unchanged, then cached/ranges/stream
    extra: dict[str, int] = field(default_factory=dict)


STRATEGIES = ("aggregate", "stream")


def first_pass(check_name: str) -> str:
    """``aggregate`` when this check's last full run found no drift and none of its drift is open;
    ``stream`` when it did (the aggregate would only disagree and add a scan).

    Only full runs count: an incremental run compares the rows changed since a watermark, so
    its outcome says nothing about the rest of the table. A check never run in full starts
    with the aggregate: an audit is expected to find the stores agreeing.
    """
    from consistency.models import CheckRun, Drift

    last = (
        CheckRun.objects.filter(check_name=check_name, status__in=["ok", "drift"], run__mode="full")
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


def release_idle(*aliases: str) -> None:
    """Give this thread's pooled connections on ``aliases`` back to their pool.

    The calling thread of an audit holds connections from recording the run and choosing the
    first pass while the scan threads take their own: with psycopg's pool, N concurrent
    audits would then need two connections per alias each. A connection inside a
    transaction, or one that is not pooled (reconnecting would only cost time), stays.
    """
    for alias in dict.fromkeys(aliases):
        connection = connections[alias]
        if getattr(connection, "pool", None) is not None and not connection.in_atomic_block:
            connection.close()


def spare_connections(alias: str) -> int | None:
    """Connections ``alias``'s pool could hand out now without waiting; None when not pooled."""
    pool = getattr(connections[alias], "pool", None)
    if pool is None:
        return None
    stats = pool.get_stats()
    return max(0, int(stats["pool_max"]) - int(stats["pool_size"]) + int(stats["pool_available"]))


class _Order:
    """Connections are taken in one order, by alias name (source first on a shared alias).

    Each side runs in its own thread and holds its connection until the other side's scan
    is done. If two audits could each hold one alias while waiting for the other, a small
    pool would deadlock them until its timeout; taken in a fixed order, an audit holding
    its second alias already holds its first, so one audit always completes. Unless both
    aliases are pooled, no audit can wait for one while holding the other, and both sides
    connect at once.
    """

    def __init__(self, source: RowSide, target: RowSide) -> None:
        self.first = 0 if (source.alias, 0) <= (target.alias, 1) else 1
        self.pooled = all(getattr(connections[s.alias], "pool", None) is not None for s in (source, target))
        self.taken: list[Future[int]] = [Future(), Future()]

    def take(self, index: int, side: RowSide) -> None:
        """Wait for the side before this one to hold its connection, then take ours."""
        if index != self.first and self.pooled:
            self.taken[1 - index].result()
        side.connection.ensure_connection()

    def estimates(self, index: int, side: RowSide) -> int:
        """Post this side's row estimate; return the larger of both (both tables must match)."""
        self.taken[index].set_result(side.estimate_rows())
        return max(self.taken[0].result(), self.taken[1].result(), 1)

    def failed(self, index: int, exc: BaseException) -> None:
        if not self.taken[index].done():
            self.taken[index].set_exception(exc)


def _aggregates(
    source: RowSide, target: RowSide, since: dt.datetime | None, cache_key: str | None
) -> list[tuple[tuple[int, int], bool]]:
    """Both sides' ((rows, digest), proven), each in its own thread and connection, taken in
    order. With ``cache_key`` a side first tries to prove itself unchanged since its summary."""
    order = _Order(source, target)

    def one(index: int, side: RowSide) -> tuple[tuple[int, int], bool]:
        try:
            order.take(index, side)
            order.taken[index].set_result(0)
            if cache_key is None:
                return side.aggregate(since), False
            return _summarised(side, index, cache_key)
        except BaseException as exc:
            order.failed(index, exc)
            raise
        finally:
            connections[side.alias].close()

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="consistency-aggregate") as pool:
        futures = [pool.submit(one, i, side) for i, side in enumerate((source, target))]
        return [f.result() for f in futures]


def _summarised(side: RowSide, index: int, cache_key: str) -> tuple[tuple[int, int], bool]:
    """The side's (rows, digest): its summary's when it is proven unchanged since, else its
    aggregate, which becomes the summary (``rangecache``)."""
    from consistency.engine.rangecache import SideCache, write_counters

    cache = SideCache.open(cache_key, index, side)
    if cache is None:  # caching off, or another audit of the check holds it
        return side.aggregate(), False
    try:
        counters = write_counters(side)  # before the aggregate's snapshot: they may only lag it
        proven = cache.proven(side, counters)
        if proven is not None:
            return proven, True
        totals, mark = cache.marked_aggregate(side)
        cache.note_summary(totals, mark, counters)
        return totals, False
    finally:
        cache.close()


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

    def __init__(self, locator_size: int, files: tuple[Any, Any] | None = None, rows: int = 0) -> None:
        """Temporary files, or ``files`` (fingerprints, locators) already holding ``rows`` records."""
        self.locator_size = locator_size
        if files is None:
            files = (
                tempfile.TemporaryFile(prefix="consistency-fp-"),  # noqa: SIM115 - close()
                tempfile.TemporaryFile(prefix="consistency-loc-"),  # noqa: SIM115 - close()
            )
        self.fps: Any = files[0]
        self.locators: Any = files[1]
        self.rows = rows

    def segment(self, offset: int, rows: int) -> np.ndarray:
        """The fingerprints of records ``offset`` to ``offset + rows`` (by ``pread``: several
        threads may read one spill at once, and the write position stays where it was)."""
        import numpy as np

        return np.frombuffer(os.pread(self.fps.fileno(), rows * 8, offset * 8), dtype="<i8")

    def read(self, offset: int, rows: int) -> tuple[np.ndarray, bytes]:
        """Records ``offset`` to ``offset + rows``: (fingerprints, locators)."""
        size = self.locator_size
        return self.segment(offset, rows), os.pread(self.locators.fileno(), rows * size, offset * size)

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
    strategy: str = "stream"
    proven: bool = False


class _Part:
    """What one connection of a side read: its IBLT, its spill file, and per unit where its records went."""

    def __init__(
        self, side: RowSide, cells: int, files: tuple[Any, Any] | None = None, name: str = ""
    ) -> None:
        from consistency.engine.iblt import IBLT

        self.table = IBLT(cells)
        self.spill = Spill(side.locator_size, files)
        self.name = name  # the range cache's name for the files, when they are the cache's
        self.units: dict[int, tuple[int, int, int]] = {}  # unit -> (offset, rows, digest)
        self.digests: dict[int, tuple[int, int]] = {}  # unit -> (rows, digest), digest-only passes
        # Ranges of a cached side: streamed whole (their records are all in ``table``), or
        # updated from their written rows (``_delta``: the cached IBLT loses ``removed``, gains ``added``).
        self.streamed: set[int] = set()
        self.removed: list[np.ndarray] = []
        self.added: list[np.ndarray] = []

    def add(self, chunks: Iterator[Chunk], progress: Progress | None, unit: int = -1) -> None:
        import numpy as np

        offset, digest = self.spill.rows, 0
        for fps, locators in chunks:
            self.table.add(fps)
            self.spill.write(fps, locators)
            digest ^= int(np.bitwise_xor.reduce(fps)) if len(fps) else 0
            if progress is not None:
                progress(len(fps))
        self.units[unit] = (offset, self.spill.rows - offset, digest)

    def digest(self, side: RowSide, sql: str, unit: int) -> None:
        with side.connection.cursor() as cursor:
            cursor.execute(sql, [])  # with a parameter list, as every RowSide statement (its % doubled)
            rows, digest = cursor.fetchone()
        self.digests[unit] = (int(rows), int(digest))


Work = Callable[[_Part, int, str, list[Any]], None]


def _read_units(
    side: RowSide,
    part: _Part,
    units: Iterator[tuple[int, tuple[str, list[Any]]]],
    lock: threading.Lock,
    work: Work,
) -> None:
    """Take the plan's units one at a time until none is left (the connections share them)."""
    while True:
        with lock:
            item = next(units, None)
        if item is None:
            return
        number, (sql, params) = item
        work(part, number, sql, params)


def _helper(
    side: RowSide,
    part: _Part,
    snapshot: str,
    units: Iterator[tuple[int, tuple[str, list[Any]]]],
    lock: threading.Lock,
    work: Work,
) -> None:
    try:
        try:
            side.connection.ensure_connection()
        except DatabaseError as exc:
            # A helper only speeds the scan up: without a connection (a pool with none to
            # spare) the side's other connections read its share of the units.
            logger.info("scan helper on %s got no connection (%s); the others read on", side.alias, exc)
            return
        with side.joined(snapshot):
            _read_units(side, part, units, lock, work)
    finally:
        connections[side.alias].close()


def _helpers(side: RowSide, planned: int) -> int:
    """Helper connections for a side: as planned, or as many as its pool can spare right now."""
    spare = spare_connections(side.alias)
    return planned if spare is None else min(planned, spare)


def _run(side: RowSide, plan: ScanPlan, parts: list[_Part], units: list[int], work: Work) -> None:
    """Run ``work`` on the plan's ``units``, parts[0] on this thread, the others on helper connections."""
    queue = iter([(n, plan.units[n]) for n in units])
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="consistency-part") as pool:
        running = [
            pool.submit(_helper, side, part, plan.snapshot or "", queue, lock, work) for part in parts[1:]
        ]
        _read_units(side, parts[0], queue, lock, work)
        for helper in running:
            helper.result()


@dataclass
class _SideScan:
    """One side's scan: its table, the spill files to locate candidates in, and whether
    those are the range cache's (their TIDs may be stale)."""

    table: IBLT
    spills: list[Spill]
    connections: int
    cached: bool = False
    opened: list[Spill] = field(default_factory=list)  # closed when the side is done
    strategy: str = "stream"
    proven: bool = False  # the records taken on the proof that the side did not change


def _stream_side(
    side: RowSide,
    cells: int,
    since: dt.datetime | None,
    progress: Progress | None,
    cache: SideCache | None,
    parts: list[_Part],
    counters: list[int] | None = None,
    mark: Mark | None = None,
) -> _SideScan:
    """Stream the whole side (every range); with a cache, its records become the cache's files."""
    if side.dialect != "sql":
        parts.append(_Part(side, cells))
        parts[0].add(side.stream(since), progress)
        return _SideScan(parts[0].table, [parts[0].spill], 1)
    plan = side.plan(since)
    caching = cache is not None and bool(plan.bounds)
    workers = 1 + (_helpers(side, plan.workers - 1) if plan.snapshot else 0)
    for _ in range(workers):
        if caching and cache is not None:
            name, fps, loc = cache.new_file()
            parts.append(_Part(side, cells, (fps, loc), name))
        else:
            parts.append(_Part(side, cells))

    def work(part: _Part, number: int, sql: str, params: list[Any]) -> None:
        part.add(side.stream_unit(sql, params), progress, number)

    _run(side, plan, parts, list(range(len(plan.units))), work)
    table = parts[0].table
    for part in parts[1:]:
        table.merge(part.table)
    if caching and cache is not None:
        from consistency.engine.rangecache import Unit

        units = []
        for number, (start, _end) in enumerate(plan.bounds):
            which = next(i for i, p in enumerate(parts) if number in p.units)
            offset, rows, digest = parts[which].units[number]
            units.append(Unit(start, rows, digest, which, offset))
        for part in parts:
            part.spill.fps.flush()
            part.spill.locators.flush()
        cache.save(units, [p.name for p in parts], table, counters, mark, side.locator_size)
    return _SideScan(table, [p.spill for p in parts], len(parts))


def _spills(side: RowSide, opened: list[tuple[Any, Any]]) -> list[Spill]:
    """The cache's record files (``SideCache.open_files``) as spills to locate candidates in."""
    return [Spill(side.locator_size, files, os.fstat(files[0].fileno()).st_size // 8) for files in opened]


def _cached_side(
    side: RowSide,
    cells: int,
    progress: Progress | None,
    cache: SideCache,
    parts: list[_Part],
    counters: list[int] | None,
    mark: Mark | None,
    totals: tuple[int, int] | None = None,
) -> _SideScan | None:
    """A side with a valid range cache: when its totals match the records' (strategy
    ``cached``), the records are the scan. The totals are the first pass's when it took them,
    else the summary's when the side is proven unchanged since, else, when the write counters
    have not moved, one aggregate; and, where marks are read, only records current at the
    summary's mark are taken so. Otherwise each range is looked at (``_look_at_ranges``) and
    only the ranges that moved are brought up to date. ``mark``: this scan's snapshot, for the
    summary and records it leaves.

    None when a full scan costs less than the partial update.
    """
    from consistency.engine.rangecache import Unit

    now_totals = totals if totals is not None else cache.proven(side, counters)
    proven = totals is None and now_totals is not None
    if now_totals is None and counters is not None and counters == cache.counters:
        now_totals, now_mark = cache.marked_aggregate(side)  # this snapshot's: the scan's mark
        cache.note_summary(now_totals, now_mark, counters)
    # Equal totals say the rows hold the records' values, not that they sit at the records'
    # TIDs: a side rewritten with the same values since (an undo, a no-op update) has moved.
    # Where the rows' xmin can tell, the records are taken on equal totals only when they are
    # current at the summary's mark; else the ranges are looked at. Without marks, a stale TID
    # is caught when its candidate is fetched (StaleCache).
    exact = cache.records_current() or not cache.provable(mark)
    if now_totals is not None and now_totals == cache.totals() and exact:
        if progress is not None:
            progress(now_totals[0])
        old = _spills(side, cache.open_files())
        return _SideScan(cache.iblt(), old, 1, cached=True, opened=old, strategy="cached", proven=proven)
    plan = side.plan(None, starts=[u.start for u in cache.units])
    workers = 1 + (_helpers(side, plan.workers - 1) if plan.snapshot else 0)
    parts += [_Part(side, cells) for _ in range(workers)]
    old_files = cache.open_files()
    old = _spills(side, old_files)
    try:
        moved = _look_at_ranges(side, cache, plan, parts, old, counters, mark)
    except BaseException:
        for spill in old:
            spill.close()
        raise
    if moved is None:
        for spill in old:
            spill.close()
        return None  # the full scan that follows reports the progress
    if progress is not None:
        progress(sum(rows for part in parts for rows, _ in part.digests.values()))
    table = cache.iblt()
    if not moved:
        # Unchanged after all: the next audit can go the short way.
        cache.note_summary(cache.totals(), mark, counters, records=True)
        return _SideScan(table, old, len(parts), cached=True, opened=old, strategy="ranges")
    for part in parts:
        for number in part.streamed:
            unit = cache.units[number]
            table.remove(old[unit.file].segment(unit.offset, unit.rows))
        table.merge(part.table)
        for fps in part.removed:
            table.remove(fps)
        for fps in part.added:
            table.add(fps)
    passes = ["ranges"]
    if any(len(p.units) > len(p.streamed) for p in parts):
        passes.append("delta")
    if any(p.streamed for p in parts):
        passes.append("stream")
    # Rewrite the records in range order: unchanged ranges from the cache, moved ones from the parts.
    name, fps, loc = cache.new_file()
    out = Spill(side.locator_size, (fps, loc))
    units = []
    for number, unit in enumerate(cache.units):
        if number in moved:
            part = next(p for p in parts if number in p.units)
            offset, rows, dig = part.units[number]
            part.spill.fps.flush()
            part.spill.locators.flush()
            cache.copy_records(
                (part.spill.fps, part.spill.locators), offset, rows, (fps, loc), side.locator_size
            )
        else:
            rows, dig = unit.rows, unit.digest
            cache.copy_records(old_files[unit.file], unit.offset, rows, (fps, loc), side.locator_size)
        units.append(Unit(unit.start, rows, dig, 0, out.rows))
        out.rows += rows
    for spill in old:
        spill.close()
    fps.flush()
    loc.flush()
    cache.save(units, [name], table, counters, mark, side.locator_size)
    return _SideScan(table, [out], len(parts), cached=True, opened=[out], strategy="+".join(passes))


def _look_at_ranges(
    side: RowSide,
    cache: SideCache,
    plan: ScanPlan,
    parts: list[_Part],
    old: list[Spill],
    counters: list[int] | None,
    mark: Mark | None,
) -> set[int] | None:
    """The ranges that moved since the records, each brought up to date in ``parts`` (its
    written rows, ``_delta``, or streamed whole); None when a full stream costs less.

    Where the records' mark is on this history, the rows' xmin tells which moved: in one pass
    (each range's count, written rows and kept TIDs at once) when the write counters show
    writes that, spread, would move most ranges, else a pass that only counts each range's rows
    and those written, then the delta of the moved ones; a side most of whose rows were written
    then streams in full. Otherwise each range's digest (one hashing scan) tells, and the moved
    ones are streamed; more than half moved, the side streams in full.
    """
    from consistency.engine.rangecache import written_sql, written_where

    units = cache.units
    everything = list(range(len(plan.units)))
    moved: set[int] = set()

    def stream(part: _Part, number: int, sql: str, params: list[Any]) -> None:
        part.add(side.stream_unit(sql, params), None, number)
        part.streamed.add(number)

    def update(part: _Part, number: int, sql: str, params: list[Any], delta: Delta | None = None) -> None:
        """Bring moved range ``number`` up to date in ``part`` (this thread's), from its delta."""
        rows, written = counts[number]
        unit = units[number]
        start, end = plan.bounds[number]
        if delta is None:
            delta = side.delta_unit(side.delta_sql(start, end, cond, kept=unit.rows > rows - written))
        # (Both counts come from one snapshot; a difference would be a bug, not a race.)
        squares = len(delta.fps) == written
        if not squares or not _delta(
            part, number, unit, old[unit.file], rows - written, delta, side.locator_size
        ):
            stream(part, number, sql, params)

    if not cache.provable(mark) or cache.records_mark is None:
        range_sql = [side.range_sql(a, b, digest=True) for a, b in plan.bounds]
        _run(side, plan, parts, everything, lambda part, n, sql, params: part.digest(side, range_sql[n], n))
        digests = {n: d for part in parts for n, d in part.digests.items()}
        moved = {n for n, u in enumerate(units) if digests[n] != (u.rows, u.digest)}
        if len(moved) * 2 > len(units):
            return None
        _run(side, plan, parts, sorted(moved), stream)
        return moved
    cond = written_where(side, cache.records_mark)
    counts: dict[int, tuple[int, int]] = {}  # range -> (rows, rows written since the records)
    if _scattered(cache, counters):

        def sweep(part: _Part, number: int, sql: str, params: list[Any]) -> None:
            start, end = plan.bounds[number]
            delta = side.delta_unit(side.delta_sql(start, end, cond, kept=True))
            part.digests[number] = counts[number] = (int(delta.rows or 0), len(delta.fps))
            if counts[number] != (units[number].rows, 0):
                moved.add(number)  # (one bytecode: the GIL makes it atomic)
                update(part, number, sql, params, delta)

        _run(side, plan, parts, everything, sweep)
        return moved
    counting = written_sql(side, cache.records_mark)
    range_sql = [
        f"SELECT count(*), {counting} FROM {side.table}{side.range_where(a, b)}" for a, b in plan.bounds
    ]
    _run(side, plan, parts, everything, lambda part, n, sql, params: part.digest(side, range_sql[n], n))
    counts.update((n, d) for part in parts for n, d in part.digests.items())
    moved = {n for n, u in enumerate(units) if counts[n] != (u.rows, 0)}
    # Only the written rows of a moved range are hashed: a full scan costs less only when
    # most rows were written.
    if sum(counts[n][1] for n in moved) * 2 > sum(rows for rows, _ in counts.values()):
        return None
    _run(side, plan, parts, sorted(moved), update)
    return moved


def _tid_keys(tids: bytes) -> np.ndarray:
    """TIDs as ``tidsend`` sends them (block uint32, line uint16, big-endian) as sortable uint64."""
    import numpy as np

    parsed = np.frombuffer(tids, dtype=[("block", ">u4"), ("line", ">u2")])
    return (parsed["block"].astype(np.uint64) << np.uint64(16)) | parsed["line"].astype(np.uint64)


def _among(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``np.isin(values, wanted)`` for unique uint64 keys, by sorting ``wanted`` once and
    binary search (isin sorts both together: ~8x slower on a range's 65,536 TIDs)."""
    import numpy as np

    if not len(wanted):
        return np.zeros(len(values), dtype=bool)
    ordered = np.sort(wanted)
    at = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
    return np.asarray(ordered[at] == values)


def _delta(
    part: _Part, number: int, unit: Unit, spill: Spill, kept: int, delta: Delta, locator_size: int
) -> bool:
    """Bring one moved range's records up to date from ``delta``, the rows written since them,
    into ``part``; False (nothing done) where the database's answer does not square with the
    records.

    The range holds ``kept`` rows written before the records' mark and ``len(delta.fps)``
    since (``rangecache.written_where``). A row not written since is a row version the records
    hold, at the same TID: so the records' rows are the kept ones, plus ``unit.rows - kept``
    gone since (deleted, updated, or written by a transaction still open at the mark). Only
    the written rows are hashed and sent; when some of the records' rows are gone, the kept
    rows' TIDs are sent too (6 bytes a row, no hashing), and the records at other TIDs are the
    ones gone."""
    import numpy as np

    gone = unit.rows - kept
    if gone < 0 or (gone and delta.kept is None):
        return False
    old_fps, old_locators = spill.read(unit.offset, unit.rows)
    removed = np.empty(0, dtype=np.int64)
    if gone and delta.kept is not None:
        held = _among(_tid_keys(old_locators), _tid_keys(delta.kept))
        if int(held.sum()) != kept or len(delta.kept) != kept * locator_size:
            return False
        removed = old_fps[~held]
        old_fps = old_fps[held]
        old_locators = np.frombuffer(old_locators, dtype=f"V{locator_size}")[held].tobytes()
    new_fps = np.concatenate([old_fps, delta.fps])
    offset = part.spill.rows
    part.spill.write(new_fps, old_locators + delta.tids)
    digest = int(np.bitwise_xor.reduce(new_fps)) if len(new_fps) else 0
    part.units[number] = (offset, len(new_fps), digest)
    part.removed.append(removed)
    part.added.append(delta.fps)
    return True


def _scattered(cache: SideCache, counters: list[int] | None) -> bool:
    """Whether the writes the counters show since the cache was written would, if spread over
    the table, move more than half of its ranges: then the per-range digests would only lead
    to a full stream, and the side streams at once. Inserts fill the table's last pages, so only
    updates and deletes count. A guess that only saves time: the stream is exact either way."""
    if counters is None or cache.counters is None or len(counters) != len(cache.counters):
        return False
    _inserted, updated, deleted = (
        max(0, now - then) for now, then in zip(counters, cache.counters, strict=True)
    )
    ranges = len(cache.units)
    expected = ranges * (1 - (1 - 1 / ranges) ** (updated + deleted)) if ranges else 0
    return expected * 2 > ranges


def _side(
    side: RowSide,
    index: int,
    order: _Order,
    since: dt.datetime | None,
    progress: Progress | None,
    scanned: Future[_Scanned],
    wanted: Future[list[int] | None],
    cache_key: str | None,
    totals: tuple[int, int] | None = None,
) -> dict[str, Row]:
    """One side, in its own thread: scan into IBLTs and spill files, report, wait for the
    fingerprints to fetch, fetch them in the same snapshot; return the fetched rows by key."""
    from consistency.engine.ibltsize import cells_for_rows
    from consistency.engine.rangecache import SideCache, StaleCache, write_counters

    parts: list[_Part] = []
    cache: SideCache | None = None
    result: _SideScan | None = None
    try:
        order.take(index, side)
        with side.snapshot():
            cells = cells_for_rows(order.estimates(index, side))
            counters, mark = None, None
            if cache_key and side.dialect == "sql" and since is None:
                cache = SideCache.open(cache_key, index, side, cells)
                if cache is not None:
                    counters, mark = write_counters(side), cache.read_mark(side)
            digested = False
            # Writes spread over most ranges make the digests a waste; the range proof is cheap
            # enough to try whatever the counters say (writes are often in a few ranges).
            if (
                cache is not None
                and cache.valid
                and (cache.provable(mark) or not _scattered(cache, counters))
            ):
                result = _cached_side(side, cells, progress, cache, parts, counters, mark, totals)
                if result is None:  # most ranges moved: scan it all again
                    digested = True
                    for part in parts:
                        part.spill.close()
                    parts.clear()
            if result is None:
                result = _stream_side(side, cells, since, progress, cache, parts, counters, mark)
                if digested:
                    result.strategy = "ranges+stream"  # the digests, then every range
            rows = sum(s.rows for s in result.spills)
            scanned.set_result(
                _Scanned(
                    rows, result.table, result.spills, result.connections, result.strategy, result.proven
                )
            )
            fps = wanted.result()
            if not fps:
                return {}
            found_fps: set[int] = set()
            locators: list[bytes] = []
            for spill in result.spills:
                got_fps, got = spill.locate(fps)
                found_fps.update(got_fps)
                locators += got
            fetched = [row for row in side.rows_by_locators(locators, since) if row.fp in found_fps]
            if cache is not None and {row.fp for row in fetched} != set(fps):
                # A candidate was not where the cache (or this scan) put it: the cache is stale.
                cache.discard()
                raise StaleCache(f"{side.label}: a cached row location no longer holds its row")
        return {row.key: row for row in fetched}
    except BaseException as exc:
        order.failed(index, exc)
        if not scanned.done():
            scanned.set_exception(exc)
        if cache is not None and not isinstance(exc, StaleCache):
            cache.discard()
        raise
    finally:
        for part in parts:
            part.spill.close()
        if result is not None:
            for spill in result.opened:
                spill.close()
        if cache is not None:
            cache.close()
        connections[side.alias].close()


def _decode(a: _Scanned, b: _Scanned, stats: RowDiffStats) -> tuple[list[int], list[int]]:
    """Fingerprints only in ``a`` and only in ``b``.

    The first tables decode drift of a few percent of the rows. When the drift
    is larger, the failed table still tells roughly how large it is, and the
    spill files are read again into tables sized for that, split into
    fingerprint partitions (a batch of partitions per pass over the files).
    """
    from consistency.engine.ibltsize import RETRY_CELLS, K

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
    cache_key: str | None = None,
    totals: Sequence[tuple[int, int] | None] = (None, None),
) -> tuple[dict[str, Row], dict[str, Row]]:
    """Scan both sides once and fetch the rows only one side holds, by key. ``totals``: each
    side's (rows, digest) when the aggregate pass took them."""
    order = _Order(source, target)
    scanned: list[Future[_Scanned]] = [Future(), Future()]
    wanted: list[Future[list[int] | None]] = [Future(), Future()]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="consistency-scan") as pool:
        workers = [
            pool.submit(_side, side, i, order, since, progress, scanned[i], wanted[i], cache_key, totals[i])
            for i, side in enumerate((source, target))
        ]
        # The sides' first queries need no NumPy: it loads here once both hold their
        # connections (connecting is Python work too), while the databases read.
        wait(order.taken)
        import consistency.engine.iblt  # noqa: F401

        try:
            a, b = scanned[0].result(), scanned[1].result()
            stats.source_rows, stats.target_rows = a.rows, b.rows
            stats.extra["connections"] = a.connections + b.connections
            if a.proven or b.proven:  # (a side the first pass proved is not proven again here)
                proven = int(a.proven) + int(b.proven)
                stats.extra["proven_sides"] = max(stats.extra.get("proven_sides", 0), proven)
            passes = {p for side in (a, b) for p in side.strategy.split("+")}
            scan = "+".join(p for p in ("cached", "ranges", "delta", "stream") if p in passes)
            stats.strategy = scan if stats.strategy == "stream" else f"{stats.strategy}+{scan}"
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
    cache_key: str | None = None,
) -> tuple[list[Finding], RowDiffStats]:
    """Compare both sides of ``bound``; return confirmed findings and the figures.

    ``strategy`` ``aggregate`` runs the aggregate pass first (SQL dialect), ``stream`` does not.
    ``cache_key`` (the check's name) keeps each side's summary and range cache (``rangecache``)
    between full audits. In the aggregate pass, a side proven unchanged since its summary
    hashes no row (both proven: strategy ``unchanged``). When the scan runs (after drift, or
    after an aggregate pass that disagreed), a side whose totals (proven, or aggregated when
    its write counters did not move) match its cached records takes them (``cached``);
    otherwise it reads per-range digests and streams only the ranges that moved (``ranges``).
    After a clean run the aggregate pass still goes first: on identical tables it is one
    query per side, cheaper than the per-range digests.
    """
    from consistency.engine.rangecache import StaleCache

    if strategy not in STRATEGIES:
        raise ValueError(f"unknown row parity strategy {strategy!r}; expected one of {STRATEGIES}")
    stats = RowDiffStats()
    source, target = make_sides(bound)
    if source.dialect != "sql" or since is not None:
        cache_key = None
    # The scan threads take their own connections: give the caller's back to a pool first.
    release_idle(DEFAULT_DB_ALIAS, source.alias, target.alias)
    totals: list[tuple[int, int] | None] = [None, None]
    if strategy == "aggregate" and source.dialect == "sql":
        (source_totals, source_proven), (target_totals, target_proven) = _aggregates(
            source, target, since, cache_key
        )
        totals = [source_totals, target_totals]
        stats.source_rows, stats.target_rows = source_totals[0], target_totals[0]
        stats.segments = 1
        # Both sides proven unchanged since their summaries: no row was hashed.
        stats.strategy = "unchanged" if source_proven and target_proven else "aggregate"
        if source_proven or target_proven:
            stats.extra["proven_sides"] = int(source_proven) + int(target_proven)
        if source_totals == target_totals:
            stats.compared = stats.source_rows
            if progress is not None:
                progress(stats.source_rows + stats.target_rows)
            return [], stats
        # and then the scan: _scan appends its passes
    try:
        # A side whose cache the aggregate confirms need not aggregate again (rangecache).
        first_source, first_target = _scan(source, target, since, progress, stats, cache_key, totals)
    except StaleCache as exc:
        logger.info("range cache of %s is stale (%s): scanning again", bound.decl.name, exc)
        first = stats.strategy.split("+")[0]
        stats.strategy = first if first in ("aggregate", "unchanged") else "stream"
        stats.extra["stale_cache"] = 1
        first_source, first_target = _scan(source, target, since, progress, stats, cache_key)
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
    # In the connections' order (see _Order): the caller then holds both aliases at once.
    if (source.alias, 0) <= (target.alias, 1):
        now_source = source.rows_by_keys(keys)
        now_target = target.rows_by_keys(keys)
    else:
        now_target = target.rows_by_keys(keys)
        now_source = source.rows_by_keys(keys)
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
