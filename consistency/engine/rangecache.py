"""What a full row-parity scan of one side leaves behind, so that the next one re-reads only what changed.

A full scan of a PostgreSQL side reads it in TID ranges (``RowSide.plan``). The side's
cache keeps, per range, its rows and the XOR of their fingerprints (its digest), plus
the side's (fingerprint, TID) records in range order and its IBLT. The next full audit
of the check asks PostgreSQL only for each range's (rows, digest), one aggregate scan
of the side, and streams only the ranges whose digest moved: the side's IBLT is the
cached one minus those ranges' old records plus their new ones, and the records are
rewritten with the new ranges in place. Ranges whose digest did not move are taken as
they were (a 64-bit XOR and a count, the same trust the plain aggregate pass puts in
one digest of the whole table).

Each cache also keeps the table's write counters (``pg_stat_get_tuples_inserted``, ``_updated``,
``_deleted``) as they were when it was written. When they have not moved since, the side is
most likely unchanged, and one plain aggregate of the side (a parallel scan, the cost of the
floor) confirms it against the cache's totals: the per-range digests, which cost more, are
skipped. The counters only choose the path; the aggregate decides (they are flushed with a
delay of up to seconds, and a reset or a no-op update only sends the audit the longer way).

A cached TID can go stale while its range's digest stays put (a row moved inside its
range without changing). Every candidate fetched by a cached TID is checked against its
fingerprint; one that is not found there voids the cache (``StaleCache``) and the audit
scans again without it.

One directory per check and side under ``CONSISTENCY["RANGE_CACHE_DIR"]`` (default
``VAR_DIR/rangecache``; ``None`` turns caching off), 14 bytes a row on disk, locked
with ``flock`` while an audit uses it (a second concurrent audit of the check scans
without the cache). It is tied to the database, the table's storage (``relfilenode``:
TRUNCATE, VACUUM FULL, CLUSTER void it), the fingerprint SQL and the IBLT size.
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

VERSION = 1
_COPY_CHUNK = 8 << 20


class StaleCache(Exception):
    """A candidate was not at its cached TID: the cache no longer describes the table."""


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


def has_cache(check: str, index: int, side: RowSide) -> bool:
    """Whether side ``index`` of ``check`` has a cache (not yet whether it still describes the table)."""
    root = cache_root()
    return root is not None and (_side_dir(root, check, index, side.alias) / "index.json").exists()


@dataclass
class Unit:
    """One TID range: its first block, rows, digest, and where its records are (file, record offset)."""

    start: int
    rows: int
    digest: int
    file: int
    offset: int


class SideCache:
    """One side's cache directory, locked for this audit."""

    def __init__(self, path: Path, lock_fd: int, identity: dict[str, Any]) -> None:
        self.path, self._lock_fd, self.identity = path, lock_fd, identity
        self.units: list[Unit] = []
        self.files: list[str] = []
        self.cells = 0
        self.counters: list[int] | None = None
        self.valid = False

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def open(cls, check: str, index: int, side: RowSide, cells: int) -> SideCache | None:
        """The cache of ``check``'s side ``index`` (0 source, 1 target), locked; None when caching
        is off or another audit holds it. ``valid`` says whether it describes the table now."""
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
        cache = cls(path, fd, _identity(side, cells))
        cache._load()
        return cache

    def _load(self) -> None:
        try:
            index = json.loads((self.path / "index.json").read_text())
        except (OSError, ValueError):
            return
        if index.get("identity") != self.identity:
            return
        self.units = [Unit(**u) for u in index["units"]]
        self.files = list(index["files"])
        self.cells = int(index["cells"])
        self.counters = index.get("counters")
        self.valid = bool(self.units) and all(
            (self.path / f"{name}.fps").exists() and (self.path / f"{name}.loc").exists()
            for name in self.files
        )

    def totals(self) -> tuple[int, int]:
        """(rows, XOR of fingerprints) of the whole side when the cache was written."""
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
    def save(self, units: list[Unit], files: list[str], table: IBLT, counters: list[int] | None) -> None:
        """Make ``units`` in ``files`` and ``table`` the cache (atomically), and drop older files.
        ``counters`` are the table's write counters read before the scan (``write_counters``)."""
        import numpy as np

        tmp = self.path / "iblt.tmp.npz"
        np.savez(tmp, fp=table.fp, check=table.check, items=np.int64(table.items))
        os.replace(tmp, self.path / "iblt.npz")
        self.units, self.files, self.cells, self.valid = units, files, table.m, True
        self.note_counters(counters)
        self._sweep(keep=set(files))

    def note_counters(self, counters: list[int] | None) -> None:
        """Rewrite the index (atomically) with ``counters``: the cache still describes the table."""
        index = {
            "version": VERSION,
            "identity": self.identity,
            "cells": self.cells,
            "files": self.files,
            "units": [asdict(u) for u in self.units],
            "counters": counters,
        }
        (self.path / "index.tmp").write_text(json.dumps(index))
        os.replace(self.path / "index.tmp", self.path / "index.json")
        self.counters = counters

    def discard(self) -> None:
        """Forget the cache (a stale TID, or a failed audit that left files half written)."""
        for name in ("index.json", "iblt.npz"):
            (self.path / name).unlink(missing_ok=True)
        self.valid = False
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


def _identity(side: RowSide, cells: int) -> dict[str, Any]:
    """What the cache must match: database, table storage, fingerprint SQL, table and locator sizes."""
    from consistency.engine.ibltsize import size_for

    with side.connection.cursor() as cursor:
        cursor.execute(
            """SELECT d.oid::bigint, c.oid::bigint, c.relfilenode::bigint, current_database()
               FROM pg_database d, pg_class c
               WHERE d.datname = current_database() AND c.oid = %s::regclass""",
            [side.regclass],
        )
        db_oid, table_oid, filenode, name = cursor.fetchone()
    sql = hashlib.sha256(side.fp_sql().encode()).hexdigest()
    return {
        "version": VERSION,
        "database": [int(db_oid), str(name)],
        "table": [int(table_oid), int(filenode), side.regclass],
        "fp_sql": sql,
        "cells": size_for(cells),
        "locator_size": side.locator_size,
    }
