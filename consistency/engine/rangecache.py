"""What a row parity audit leaves behind, so that the next one re-reads only what changed.

Two things per check and side, in one directory:

**The summary**: the side's (rows, XOR of fingerprints) as one snapshot saw them, with that
snapshot's *mark* (its xmin and xmax as 64-bit transaction ids, the WAL timeline and
position). Every full audit of a PostgreSQL side leaves one: the aggregate pass (the mark is
read in the same statement), a stream or the range digests. The next audit first asks
whether the table can have changed since (``prove_unchanged``), in one serial scan that reads
only each row's ``xmin`` (about a third of the floor's hashing scan): every row version a
write leaves carries its writer's transaction id, and a transaction that had not finished when
the mark's snapshot was taken has an id at or above its xmin. So if no visible row has
``age(xmin)`` in ``[0, age(mark.xmin)]`` and the row count is the summary's, the rows visible
now are exactly the rows the summary's snapshot saw (none added or rewritten, the same number,
so none removed), and the summary's totals are the side's totals without hashing a row. This is
exact, not a guess, within the guards that keep the 32-bit ``age`` arithmetic and the history
linear: the same database and table storage (``relfilenode``), the same fingerprint SQL and
server version, the same WAL timeline (a failover or point-in-time recovery forks history),
neither WAL position nor transaction ids gone backwards, and fewer than 2^30 transactions
since the mark. Freezing keeps a row's raw ``xmin`` (PostgreSQL 9.4+), so VACUUM FREEZE does not
void the proof; a no-op update, or a transaction still running when the mark was taken, only
sends the audit the longer way (the aggregate). Where the audit's role may not execute the
functions a mark is read with (``MARK_FUNCTIONS``: every role may by default; a hardened
database may revoke them), there is no mark and no proof, and the audit hashes as before.

**The records** of a full streaming scan (``RowSide.plan``'s TID ranges): per range its rows
and the XOR of their fingerprints (its digest), plus the side's (fingerprint, TID) records in
range order and its IBLT, and the mark of the snapshot they describe. The next audit that must
scan (drift was found, or the aggregates disagree) takes them as they are when the side's
totals, proven or aggregated, match theirs. Otherwise it tells which ranges moved: by the same
proof, range by range, when the records' mark is on this history (each range's rows and those
written since the mark, no row hashed: a range with none written and its old count holds the
very row versions, at the very TIDs, it held), else by each range's (rows, digest), one hashing
scan of the side. Told by the proof, a moved range is brought up to date from its *delta*:
only the rows written since the mark are hashed and sent, with, when some of the records' rows
are gone, the TIDs of the rows kept (no hashing); the records at other TIDs are the ones gone
(``rowdiff._delta``). Where the write counters show writes spread over most ranges, counting
and delta are one pass over the ranges. Told by the digests, a moved range is streamed whole.
The side's IBLT is the cached one minus the gone records plus the new ones, and the records
are rewritten with the new ranges in place. Ranges whose digest did not move are taken as they
were (a 64-bit XOR and a count, the same trust the plain aggregate pass puts in one digest of
the whole table).

Equal totals alone do not make the records usable: a side rewritten with its own values (an
undo, a no-op update) keeps its totals at new TIDs. Where marks are read, the records are taken
on equal totals only while they are *current*, written at the summary's mark or moved on with
it by proofs (``records_current``); otherwise the ranges are looked at.

Both keep the table's write counters (``pg_stat_get_tuples_inserted``, ``_updated``,
``_deleted``) as they were. They only choose the path: when they moved, the whole-side proof is
not tried (it would fail); when they did not, it is, and the proof or the aggregate decides
(they are flushed with a delay of up to seconds, and a reset or a no-op update only sends the
audit the longer way). Without the range proof, counters showing writes spread over most
ranges send the side straight to a full stream; with it, the ranges are looked at anyway,
since writes are often in a few ranges and the look costs a third of the digests.

A cached TID can go stale while its range's digest stays put (a row moved inside its
range without changing). Every candidate fetched by a cached TID is checked against its
fingerprint; one that is not found there voids the cache (``StaleCache``) and the audit
scans again without it.

One directory per check and side under ``CONSISTENCY["RANGE_CACHE_DIR"]`` (default
``VAR_DIR/rangecache``; ``None`` turns caching off), 14 bytes a row on disk, locked
with ``flock`` while an audit uses it (a second concurrent audit of the check goes without
it). It is tied to the database, the table's storage (``relfilenode``: TRUNCATE, VACUUM FULL,
CLUSTER void it), the fingerprint SQL and the server's version; the records also to the IBLT size.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consistency.engine.iblt import IBLT
    from consistency.engine.rowside import RowSide

VERSION = 2
_COPY_CHUNK = 8 << 20
# Transactions after a mark within which ``age(xmin)`` (32-bit, exact below 2^31) still tells
# the rows written since from the rows before; with room for what runs during the proof.
WINDOW = 1 << 30
# The mark of the statement's snapshot: scalar subqueries (run once, by the leader, so a
# parallel aggregate stays parallel). The timeline comes from the current WAL file's name on a
# primary, from the last restartpoint on a standby. PostgreSQL checks the right to execute each
# function when the statement starts, whichever CASE branch runs, so it is only sent where
# ``_privileges`` found every one of ``MARK_FUNCTIONS`` executable.
MARK_SQL = (
    "(SELECT pg_current_snapshot()::text), "
    "(SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
    " ELSE pg_current_wal_lsn() END)::text), "
    "(SELECT CASE WHEN NOT pg_is_in_recovery()"
    " THEN ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::int"
    " ELSE (SELECT timeline_id FROM pg_control_checkpoint()) END)"
)
MARK_FUNCTIONS = (
    "pg_current_snapshot()",
    "pg_last_wal_replay_lsn()",
    "pg_current_wal_lsn()",
    "pg_walfile_name(pg_lsn)",
    "pg_control_checkpoint()",
)


class StaleCache(Exception):
    """A candidate was not at its cached TID: the cache no longer describes the table."""


@dataclass(frozen=True)
class Mark:
    """Where in the database's history a snapshot was: its xmin and xmax (64-bit transaction
    ids), the WAL position and timeline when it was read."""

    xmin: int
    xmax: int
    lsn: int
    timeline: int

    @classmethod
    def parse(cls, snapshot: str | None, lsn: str | None, timeline: int | None) -> Mark | None:
        """From ``MARK_SQL``'s three columns; None when one is missing."""
        if snapshot is None or lsn is None or timeline is None:
            return None
        xmin, xmax, _running = snapshot.split(":", 2)
        high, low = lsn.split("/")
        return cls(int(xmin), int(xmax), (int(high, 16) << 32) | int(low, 16), int(timeline))

    def follows(self, earlier: Mark) -> bool:
        """Whether this mark comes after ``earlier`` on one linear history, close enough for
        ``age(xmin)``: the same timeline, neither WAL nor transaction ids gone back."""
        return (
            self.timeline == earlier.timeline
            and self.lsn >= earlier.lsn
            and self.xmax >= earlier.xmax
            and self.xmax - earlier.xmin < WINDOW
        )


@dataclass(frozen=True)
class Summary:
    """A side's (rows, XOR of fingerprints) as the snapshot ``mark`` saw them, and its write
    counters then."""

    rows: int
    digest: int
    mark: Mark | None
    counters: list[int] | None

    @property
    def totals(self) -> tuple[int, int]:
        return self.rows, self.digest


def cache_root() -> Path | None:
    from django.conf import settings

    configured = (getattr(settings, "CONSISTENCY", None) or {}).get("RANGE_CACHE_DIR", "default")
    if configured is None or configured == "":
        return None
    if configured == "default":
        return Path(settings.VAR_DIR) / "rangecache"
    return Path(configured)


def _side_dir(root: Path, check: str, index: int, alias: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", check)[:80]
    digest = hashlib.sha256(check.encode()).hexdigest()[:12]
    return root / f"{safe}-{digest}" / f"{index}-{re.sub(r'[^A-Za-z0-9_.-]', '_', alias)}"


@dataclass
class Unit:
    """One TID range: its first block, rows, digest, and where its records are (file, record offset)."""

    start: int
    rows: int
    digest: int
    file: int
    offset: int


def _mark(stored: dict[str, Any] | None) -> Mark | None:
    """A mark as ``SideCache`` stored it; a value this code cannot have written raises ValueError."""
    if stored is None:
        return None
    mark = Mark(**{k: int(stored[k]) for k in ("xmin", "xmax", "lsn", "timeline")})
    if min(asdict(mark).values()) < 0:
        raise ValueError(f"a negative value in the stored mark {stored!r}")
    return mark


class SideCache:
    """One side's cache directory, locked for this audit: its summary and its records."""

    def __init__(
        self, path: Path, lock_fd: int, identity: dict[str, Any], size: int | None, marks: bool = True
    ) -> None:
        self.path, self._lock_fd, self.identity = path, lock_fd, identity
        self.marks = marks  # this connection may read a snapshot's mark (``MARK_FUNCTIONS``)
        self._size = size  # the IBLT size this audit's records must have (None: not reading them)
        self.summary: Summary | None = None
        self._records: dict[str, Any] | None = None  # as stored, kept when not read
        self.units: list[Unit] = []
        self.files: list[str] = []
        self.cells = 0
        self.counters: list[int] | None = None  # the write counters when the records were written
        self.records_mark: Mark | None = None  # the snapshot the records describe
        self.valid = False  # the records describe the table as it was, in this audit's table size

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def open(cls, check: str, index: int, side: RowSide, cells: int | None = None) -> SideCache | None:
        """The cache of ``check``'s side ``index`` (0 source, 1 target), locked; None when caching
        is off or another audit holds it. ``cells``: the IBLT size of a scan that would use the
        records (``valid`` says whether they match it); without it only the summary is read."""
        from consistency.engine.ibltsize import size_for

        root = cache_root()
        if root is None:
            return None
        path = _side_dir(root, check, index, side.alias)
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        try:
            marks, system = _privileges(side)
            identity = _identity(side, system)
        except BaseException:
            os.close(fd)  # (the lock goes with it)
            raise
        cache = cls(path, fd, identity, None if cells is None else size_for(cells), marks)
        cache._load(side.locator_size)
        return cache

    def _load(self, locator_size: int) -> None:
        try:
            index = json.loads((self.path / "index.json").read_text())
        except (OSError, ValueError):
            return
        if not isinstance(index, dict) or index.get("version") != VERSION:
            return
        if index.get("identity") != self.identity:
            return
        try:
            self._read(index, locator_size)
        except (KeyError, TypeError, ValueError, AttributeError):
            # Not an index this code wrote: no summary, no records (the next scan rewrites it).
            self.summary, self._records, self.units, self.files, self.valid = None, None, [], [], False

    def _read(self, index: dict[str, Any], locator_size: int) -> None:
        if summary := index.get("summary"):
            self.summary = Summary(
                int(summary["rows"]),
                int(summary["digest"]),
                _mark(summary["mark"]),
                None if summary["counters"] is None else [int(n) for n in summary["counters"]],
            )
        records = index.get("records")
        if not records:
            return
        self._records = records
        self.records_mark = _mark(records.get("mark"))  # (kept in step by a summary-only opening)
        if self._size is None or (records["size"], records["locator_size"]) != (self._size, locator_size):
            return
        self.units = [Unit(**u) for u in records["units"]]
        self.files = [str(name) for name in records["files"]]
        self.cells = int(records["cells"])
        self.counters = records["counters"]
        self.valid = bool(self.units) and all(
            (self.path / f"{name}.fps").exists() and (self.path / f"{name}.loc").exists()
            for name in self.files
        )

    def totals(self) -> tuple[int, int]:
        """(rows, XOR of fingerprints) of the whole side when the records were written."""
        digest = 0
        for unit in self.units:
            digest ^= unit.digest
        return sum(unit.rows for unit in self.units), digest

    def iblt(self) -> IBLT:
        import numpy as np

        from consistency.engine.iblt import IBLT

        table = IBLT(self.cells)
        with np.load(self.path / "iblt.npz") as data:
            table.fp = data["fp"].astype(np.uint64)
            table.check = data["check"].astype(np.uint64)
            table.items = int(data["items"])
        return table

    # -- marks and the proof -----------------------------------------------------------
    def read_mark(self, side: RowSide) -> Mark | None:
        """The mark of the current statement's snapshot (in REPEATABLE READ: the transaction's);
        None where this connection may not read one."""
        if not self.marks:
            return None
        with side.connection.cursor() as cursor:
            cursor.execute(f"SELECT {MARK_SQL}", [])
            return Mark.parse(*cursor.fetchone())

    def marked_aggregate(self, side: RowSide) -> tuple[tuple[int, int], Mark | None]:
        """``RowSide.aggregate`` with the mark of the snapshot it read, in the same statement."""
        if not self.marks:
            return side.aggregate(), None
        with side.connection.cursor() as cursor:
            cursor.execute(
                f"SELECT count(*), COALESCE(bit_xor({side.fp_sql()}), 0), {MARK_SQL} FROM {side.table}", []
            )
            rows, digest, *mark = cursor.fetchone()
        return (int(rows), int(digest)), Mark.parse(*mark)

    def records_current(self) -> bool:
        """Whether the records are known to hold the very row versions, at their TIDs, that the
        summary's snapshot saw: both were written at one mark, or moved on together by proofs.
        A summary the aggregate left since (the side was written to, perhaps with the same
        values, at new TIDs) leaves the records' TIDs in doubt."""
        return (
            self.records_mark is not None
            and self.summary is not None
            and self.summary.mark == self.records_mark
        )

    def provable(self, now: Mark | None) -> bool:
        """Whether the records' ranges can be proven unchanged from the rows' xmin at ``now``."""
        return now is not None and self.records_mark is not None and now.follows(self.records_mark)

    def proven(self, side: RowSide, counters: list[int] | None) -> tuple[int, int] | None:
        """The side's (rows, digest) when it provably has not changed since the summary
        (``prove_unchanged``), else None. Not tried when the write counters moved (it would fail)."""
        summary = self.summary
        if summary is None or summary.mark is None or not self.marks:
            return None
        if counters is not None and summary.counters is not None and counters != summary.counters:
            return None
        current = self.records_current()
        now = prove_unchanged(side, summary)
        if now is None:
            return None
        if now.xmax - summary.mark.xmin > WINDOW // 4:
            # Keep the mark within reach; records current at the old mark are at the new one.
            self.note_summary(summary.totals, now, summary.counters, records=current)
        return summary.totals

    # -- files -------------------------------------------------------------------------
    def new_file(self) -> tuple[str, Any, Any]:
        """A fresh pair of record files in the cache directory: (name, fingerprints, locators)."""
        name = uuid.uuid4().hex[:16]
        return name, open(self.path / f"{name}.fps", "w+b"), open(self.path / f"{name}.loc", "w+b")

    def open_files(self) -> list[tuple[Any, Any]]:
        return [(open(self.path / f"{n}.fps", "rb"), open(self.path / f"{n}.loc", "rb")) for n in self.files]

    def copy_records(
        self, src: tuple[Any, Any], offset: int, rows: int, dst: tuple[Any, Any], locator_size: int
    ) -> None:
        """Append ``rows`` records at ``offset`` of ``src`` to ``dst`` (file objects, in the kernel)."""
        for handle_in, handle_out, size in ((src[0], dst[0], 8), (src[1], dst[1], locator_size)):
            handle_out.flush()
            left, position = rows * size, offset * size
            while left > 0:
                done = os.copy_file_range(
                    handle_in.fileno(), handle_out.fileno(), min(left, _COPY_CHUNK), position
                )
                if done <= 0:
                    raise OSError(f"short copy in the range cache {self.path}")
                left -= done
                position += done
            handle_out.seek(0, os.SEEK_END)

    # -- saving ------------------------------------------------------------------------
    def save(
        self,
        units: list[Unit],
        files: list[str],
        table: IBLT,
        counters: list[int] | None,
        mark: Mark | None,
        locator_size: int,
    ) -> None:
        """Make ``units`` in ``files`` and ``table`` the records (atomically), their totals the
        summary as of ``mark``, and drop older files. ``counters`` are the table's write counters
        read before the scan (``write_counters``)."""
        import numpy as np

        if self._size is None:
            raise ValueError("a cache opened without an IBLT size keeps no records")
        tmp = self.path / "iblt.tmp.npz"
        np.savez(tmp, fp=table.fp, check=table.check, items=np.int64(table.items))
        os.replace(tmp, self.path / "iblt.npz")
        self.units, self.files, self.cells, self.valid = units, files, table.m, True
        self.counters, self.records_mark = counters, mark
        self._records = {
            "size": self._size,
            "locator_size": locator_size,
            "cells": self.cells,
            "files": files,
            "units": [asdict(u) for u in units],
            "counters": counters,
            "mark": None if mark is None else asdict(mark),
        }
        rows, digest = self.totals()
        self.note_summary((rows, digest), mark, counters)
        self._sweep(keep=set(files))

    def note_summary(
        self, totals: tuple[int, int], mark: Mark | None, counters: list[int] | None, records: bool = False
    ) -> None:
        """Rewrite the index (atomically): the side had ``totals`` at ``mark``, its write counters
        were ``counters``; with ``records``, the records still describe it, at that mark and these
        counters."""
        self.summary = Summary(totals[0], totals[1], mark, counters)
        if records and self._records is not None:
            self._records["counters"] = self.counters = counters
            self.records_mark = mark
            self._records["mark"] = None if mark is None else asdict(mark)
        index = {
            "version": VERSION,
            "identity": self.identity,
            "summary": asdict(self.summary),
            "records": self._records,
        }
        (self.path / "index.tmp").write_text(json.dumps(index))
        os.replace(self.path / "index.tmp", self.path / "index.json")

    def discard(self) -> None:
        """Forget the cache (a stale TID, or a failed audit that left files half written)."""
        for name in ("index.json", "iblt.npz"):
            (self.path / name).unlink(missing_ok=True)
        self.valid, self.summary, self._records = False, None, None
        self._sweep(keep=set())

    def remove_files(self, names: list[str]) -> None:
        for name in names:
            for ext in ("fps", "loc"):
                (self.path / f"{name}.{ext}").unlink(missing_ok=True)

    def _sweep(self, keep: set[str]) -> None:
        for entry in self.path.iterdir():
            if entry.suffix in (".fps", ".loc") and entry.stem not in keep:
                entry.unlink(missing_ok=True)

    def close(self) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1


def write_counters(side: RowSide) -> list[int] | None:
    """The table's cumulative (inserted, updated, deleted) row counts from PostgreSQL's
    statistics, or None when statistics are off. Read in the scan's transaction; they may lag
    or lead the snapshot by a flush, which only sends a later audit the longer way (they
    choose the path, the aggregate or the digests decide)."""
    with side.connection.cursor() as cursor:
        cursor.execute(
            """SELECT current_setting('track_counts')::bool, pg_stat_get_tuples_inserted(c.oid),
                      pg_stat_get_tuples_updated(c.oid), pg_stat_get_tuples_deleted(c.oid)
               FROM pg_class c WHERE c.oid = %s::regclass""",
            [side.regclass],  # the name as a value: quoted, its % not doubled
        )
        tracked, *counts = cursor.fetchone()
    return [int(n) for n in counts] if tracked else None


def written_where(side: RowSide, mark: Mark) -> str:
    """A condition: the row was written by a transaction that had not finished when ``mark``'s
    snapshot was taken (``age(xmin)`` from 0 to the mark's xmin's; exact while the current mark
    ``follows`` it). An integer literal, so the statement runs with ``[]``."""
    return f"age({side.table}.xmin) BETWEEN 0 AND (SELECT age(xid('{int(mark.xmin)}'::xid8)))"


def written_sql(side: RowSide, mark: Mark) -> str:
    """An aggregate: how many rows ``written_where``."""
    return f"count(*) FILTER (WHERE {written_where(side, mark)})"


def prove_unchanged(side: RowSide, summary: Summary) -> Mark | None:
    """The current mark when the side's rows are exactly those ``summary``'s snapshot saw, else
    None (one serial scan of each row's ``xmin``; see the module's docstring)."""
    if summary.mark is None:
        return None
    with side.connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), {written_sql(side, summary.mark)}, {MARK_SQL} FROM {side.table}", []
        )
        rows, written, *mark = cursor.fetchone()
    now = Mark.parse(*mark)
    if now is None or not now.follows(summary.mark) or written or rows != summary.rows:
        return None
    return now


def _privileges(side: RowSide) -> tuple[bool, bool]:
    """Whether this connection's role may execute every one of ``MARK_FUNCTIONS`` (to read
    marks) and ``pg_control_system()`` (the cluster's system identifier). Superusers may; a
    hardened database may have revoked them from PUBLIC, and then the cache goes without."""
    names = [*MARK_FUNCTIONS, "pg_control_system()"]
    with side.connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join("has_function_privilege(%s, 'EXECUTE')" for _ in names), names)
        *marks, system = cursor.fetchone()
    return all(marks), bool(system)


def _identity(side: RowSide, system: bool) -> dict[str, Any]:
    """What the cache must match: cluster (when ``system`` may be read), database, table storage,
    server version, fingerprint SQL."""
    identifier = "(SELECT system_identifier FROM pg_control_system())" if system else "NULL"
    with side.connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT d.oid::bigint, c.oid::bigint, c.relfilenode::bigint, current_database(),
                       current_setting('server_version_num')::int, {identifier}
                FROM pg_database d, pg_class c
                WHERE d.datname = current_database() AND c.oid = %s::regclass""",
            [side.regclass],
        )
        db_oid, table_oid, filenode, name, version, system_id = cursor.fetchone()
    sql = hashlib.sha256(side.fp_sql().encode()).hexdigest()
    return {
        "system": None if system_id is None else str(system_id),
        "database": [int(db_oid), str(name)],
        "table": [int(table_oid), int(filenode), side.regclass],
        "server": int(version),
        "fp_sql": sql,
    }
