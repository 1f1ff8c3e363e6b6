"""Read one side of a row parity check: fingerprints in bulk, rows by key or location.

Two dialects, one per pair of sides (so both sides always hash alike):
- ``sql``: both sides are PostgreSQL. The database normalises and hashes each
  row (``hashtextextended``) and packs (fingerprint, TID) pairs into binary
  ``string_agg`` blobs, 14 bytes a row, parsed by NumPy without a Python loop
  per row. A candidate row is fetched back by its TID in the scan's snapshot.
- ``python``: any other pair (SQLite, mixed). Rows are read in chunks and
  hashed in Python with the same normalisers' Python rendering; a candidate is
  found again by its payload (the integer key, or a hash of the key).

Every statement written here on the audited table runs with a parameter list (``[]`` when it
has no values), never without one: names go in through ``ident``, which doubles a ``%`` as
the ``format`` paramstyle wants, and a literal ``%`` operator is written ``%%``. The table's
name as a value (``%s::regclass``) is ``RowSide.regclass``, quoted but not doubled.

NumPy is imported where a scan needs it, not at import time: the command's
start-up (``checkconsistency --list``, repairs) does not pay for it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from django.db import connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from consistency.engine.normalizers import SEPARATOR, Normalizer

if TYPE_CHECKING:
    import numpy as np

    Chunk = tuple[np.ndarray, bytes]

KEY_SEPARATOR = "\x1e"
# Two aggregates over the same rows in the same order: 8-byte fingerprints, 6-byte TIDs.
_PACKED = "string_agg(int8send(f), ''::bytea), string_agg(tidsend(t), ''::bytea)"
UNIT_ROWS = 65_536  # rows per TID range a full scan reads in one query (about 1 MB of output)
TID_SIZE = 6  # tidsend: block number (uint32) and line pointer (uint16), big-endian
_INT_KEYS = {
    "AutoField",
    "BigAutoField",
    "SmallAutoField",
    "IntegerField",
    "BigIntegerField",
    "SmallIntegerField",
    "PositiveIntegerField",
    "PositiveBigIntegerField",
}


@dataclass(frozen=True)
class Row:
    """One row as compared: its key, normalised values, raw values and fingerprint."""

    key: str
    fp: int
    norm: tuple[str, ...]
    raw: dict[str, Any]
    updated: dt.datetime | None


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier, an embedded double quote doubled.

    PostgreSQL and SQLite share this syntax. Django's ``ops.quote_name`` does not
    double an embedded quote (``a"b`` becomes the broken ``"a"b"``), so the SQL the
    engine writes itself never goes through it.
    """
    if "\x00" in name:
        raise ValueError(f"an SQL identifier cannot hold a NUL character: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def ident(name: str) -> str:
    """``name`` quoted for a statement executed with parameters: ``"`` doubled, ``%`` doubled.

    Django's cursors take the ``format`` paramstyle on PostgreSQL and SQLite alike, so the
    driver reads ``%%`` back as ``%`` (and a lone ``%s`` in a name would be a placeholder).
    """
    return quote_ident(name).replace("%", "%%")


def _h64(text: str, person: bytes) -> int:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, person=person).digest()
    return int.from_bytes(digest, "little", signed=True)


class RowSide:
    """One model on one alias, with the columns a check compares."""

    def __init__(
        self,
        model: type[models.Model],
        alias: str,
        key: Sequence[models.Field],
        fields: Sequence[tuple[str, models.Field, Normalizer]],
        updated: models.Field | None,
        dialect: str,
    ) -> None:
        self.model, self.alias, self.key, self.fields = model, alias, tuple(key), tuple(fields)
        self.updated, self.dialect = updated, dialect
        self.int_key = len(self.key) == 1 and self.key[0].get_internal_type() in _INT_KEYS
        # SQL text, for statements run with parameters; and the name as a ``%s::regclass`` value.
        self.table = ident(model._meta.db_table)
        self.regclass = quote_ident(model._meta.db_table)

    @property
    def label(self) -> str:
        return f"{self.model._meta.db_table}@{self.alias}"

    @property
    def connection(self) -> BaseDatabaseWrapper:
        """This thread's connection: scans run in their own threads, each with its own."""
        return connections[self.alias]

    # -- SQL building (PostgreSQL dialect). Every identifier through ``ident``. ----------
    def _col(self, field: models.Field) -> str:
        return f"{self.table}.{ident(str(field.column))}"

    def key_sql(self) -> str:
        parts = [f"CAST({self._col(f)} AS TEXT)" for f in self.key]
        return f" || chr({ord(SEPARATOR)}) || ".join(parts)

    def norm_sql(self) -> list[str]:
        return [normalizer.sql(self._col(field)) for _, field, normalizer in self.fields]

    def fp_sql(self) -> str:
        row = f" || chr({ord(SEPARATOR)}) || ".join(self.norm_sql())
        return f"hashtextextended({self.key_sql()} || chr({ord(KEY_SEPARATOR)}) || {row}, 0)"

    def _since_sql(self, since: dt.datetime | None) -> tuple[str, list[Any]]:
        if since is None or self.updated is None:
            return "", []
        return f" WHERE {self._col(self.updated)} >= %s", [since]

    # -- Python dialect -----------------------------------------------------------------
    def key_text(self, values: Sequence[Any]) -> str:
        return SEPARATOR.join(str(f.to_python(v)) for f, v in zip(self.key, values, strict=True))

    def py_norm(self, raw: Sequence[Any]) -> tuple[str, ...]:
        return tuple(
            n.py(f.to_python(v) if f.get_internal_type() == "UUIDField" else v)
            for (_, f, n), v in zip(self.fields, raw, strict=True)
        )

    def py_fp(self, key: str, norm: Sequence[str]) -> int:
        return _h64(key + KEY_SEPARATOR + SEPARATOR.join(norm), b"consistency-row")

    def py_payload(self, key_values: Sequence[Any], key: str) -> int:
        if self.int_key:
            return int(key_values[0])
        return _h64(key, b"consistency-key")

    # -- bulk fingerprints --------------------------------------------------------------
    def aggregate(self, since: dt.datetime | None = None) -> tuple[int, int]:
        """(rows, XOR of fingerprints), computed by the database in one scan (SQL dialect).

        Keys are unique, so the XOR of the rows' fingerprints is a set digest; on bigint
        ``bit_xor`` is cheaper than ``sum``, which widens to numeric. PostgreSQL runs it as
        one parallel aggregate, like the floor.
        """
        where, params = self._since_sql(since)
        digest = f"COALESCE(bit_xor({self.fp_sql()}), 0)"
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*), {digest} FROM {self.table}{where}", params)
            rows, value = cursor.fetchone()
        return int(rows), int(value)

    def estimate_rows(self) -> int:
        if self.connection.vendor == "postgresql":
            with self.connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                    [self.regclass],  # quoted: regclass parses identifier syntax
                )
                found = cursor.fetchone()
            if found and found[0] > 0:
                return int(found[0])
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {self.table}", [])
            return int(cursor.fetchone()[0])

    @property
    def locator_size(self) -> int:
        """Bytes that say where a row is: a TID (SQL dialect) or the payload (Python dialect)."""
        return TID_SIZE if self.dialect == "sql" else 8

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One REPEATABLE READ transaction (SQL dialect): the scan and the fetch by TID see one snapshot.

        The Python dialect reads without one; its candidates are found again by key.
        """
        if self.dialect != "sql":
            yield
            return
        with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield

    @contextmanager
    def joined(self, snapshot: str) -> Iterator[None]:
        """A helper connection's transaction on the snapshot ``plan`` exported."""
        with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute("SET TRANSACTION SNAPSHOT %s", [snapshot])
            yield

    def range_sql(self, start: int, end: int | None, digest: bool = False) -> str:
        """One TID range's query: its packed (fingerprint, TID) blobs, or with ``digest`` its
        (rows, XOR of fingerprints), to run with ``[]``. Block numbers are integers, so the
        literals are safe."""
        where = self.range_where(start, end)
        if digest:
            return f"SELECT count(*), COALESCE(bit_xor({self.fp_sql()}), 0) FROM {self.table}{where}"
        return self.packed_sql(where)

    @staticmethod
    def range_where(start: int, end: int | None) -> str:
        """`` WHERE`` the TID is in blocks [start, end) (to the end of the table when ``end`` is None)."""
        upper = "" if end is None else f" AND ctid < '({int(end)},0)'::tid"
        return f" WHERE ctid >= '({int(start)},0)'::tid{upper}"

    def delta_sql(self, start: int, end: int | None, written: str, kept: bool) -> str:
        """One TID range's rows ``written`` (a condition) since the range cache's records, as
        (fingerprints, TIDs) blobs; with ``kept``, its row count first and a third blob: the
        TIDs of the other rows, the records' rows still there. No row but a written one is
        hashed."""
        where = self.range_where(start, end)
        if not kept:
            return self.packed_sql(f"{where} AND {written}")
        tid = f"tidsend({self.table}.ctid)"
        return (
            f"SELECT count(*), string_agg(int8send({self.fp_sql()}), ''::bytea) FILTER (WHERE {written}),"
            f" string_agg({tid}, ''::bytea) FILTER (WHERE {written}),"
            f" string_agg({tid}, ''::bytea) FILTER (WHERE NOT ({written}))"
            f" FROM {self.table}{where}"
        )

    def delta_unit(self, sql: str) -> Delta:
        """Run ``delta_sql``."""
        import numpy as np

        self.connection.ensure_connection()
        with psycopg.Cursor(self.connection.connection) as cursor:
            cursor.execute(sql, [], binary=True)
            row = cursor.fetchone()
        if row is None:  # (an aggregate always answers one row)
            raise RuntimeError(f"{self.label}: no answer to a range delta")
        rows, *blobs = row if len(row) == 4 else (None, *row, None)
        written = np.frombuffer(blobs[0] or b"", dtype=">i8").astype(np.int64)
        kept = None if rows is None else bytes(blobs[2] or b"")
        return Delta(None if rows is None else int(rows), written, bytes(blobs[1] or b""), kept)

    def packed_sql(self, where: str = "", tail: str = "") -> str:
        """The (fingerprint, TID) blobs of the rows matching ``where`` (`` WHERE ...``), for
        ``stream_unit``; ``tail`` follows the inner query (``OFFSET 0``, before a GROUP BY)."""
        rows = f"SELECT {self.fp_sql()} AS f, {self.table}.ctid AS t FROM {self.table}"
        return f"SELECT {_PACKED} FROM ({rows}{where}{tail}) AS s"

    def plan(self, since: dt.datetime | None = None, starts: Sequence[int] | None = None) -> ScanPlan:
        """How to scan this side (SQL dialect, inside ``snapshot()``).

        A full scan is cut into TID ranges of about ``UNIT_ROWS`` rows (TID Range
        Scans: PostgreSQL 14, the oldest Django 5.2 connects to), read by as many
        connections as PostgreSQL would give one parallel query on this table
        (``max_parallel_workers_per_gather`` and the table's size, as the planner
        reckons them), all on one exported snapshot. Rows changed since a time are
        one query the planner can run on the updated-at index, its output split
        into groups.
        """
        with self.connection.cursor() as cursor:
            cursor.execute(
                """SELECT pg_relation_size(c.oid) / current_setting('block_size')::bigint,
                          greatest(c.reltuples, 0)::bigint,
                          current_setting('max_parallel_workers_per_gather')::int,
                          pg_size_bytes(current_setting('min_parallel_table_scan_size'))
                              / current_setting('block_size')::bigint
                   FROM pg_class c WHERE c.oid = %s::regclass""",
                [self.regclass],  # quoted: regclass parses identifier syntax (case, blanks, quotes)
            )
            blocks, tuples, max_workers, min_blocks = cursor.fetchone()
        if since is not None:
            where, params = self._since_sql(since)
            groups = 1 << max(0, (max(tuples, 1) // 500_000).bit_length())
            sql = f"{self.packed_sql(where, ' OFFSET 0')} GROUP BY f & {groups - 1}"
            return ScanPlan([(sql, params)], 1, None)
        if starts is None:
            # Never analysed (reltuples -1): size the ranges as if blocks held 50 rows each.
            step = max(1, UNIT_ROWS * blocks // (tuples if tuples > 0 else 50 * max(blocks, 1)))
            starts = list(range(0, max(blocks, 1), step))
        ends: list[int | None] = [*starts[1:], None]
        bounds = tuple(zip(starts, ends, strict=True))
        units: list[tuple[str, list[Any]]] = [(self.range_sql(a, b), []) for a, b in bounds]
        workers = 1 + min(max_workers, _parallel_workers(blocks, min_blocks), len(units) - 1)
        exported = None
        if workers > 1:
            with self.connection.cursor() as cursor:
                cursor.execute("SELECT pg_export_snapshot()")
                exported = cursor.fetchone()[0]
        return ScanPlan(units, workers, exported, bounds)

    def stream_unit(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Chunk]:
        """Run one unit of a plan on this thread's connection: (fingerprints, TIDs) per result row.

        Per-row COPY costs the client a message a row; here PostgreSQL packs each
        unit into two ``string_agg`` blobs, fetched in binary and read by NumPy in place.
        Always with a parameter list, empty or not (binary results take the extended
        protocol either way), so ``%%`` in ``sql`` always reads as ``%``.
        """
        import numpy as np

        self.connection.ensure_connection()
        with psycopg.Cursor(self.connection.connection) as cursor:
            cursor.execute(sql, list(params), binary=True)
            for fps, tids in cursor:
                if fps:
                    yield np.frombuffer(fps, dtype=">i8").astype(np.int64), bytes(tids)

    def stream(self, since: dt.datetime | None = None, chunk_rows: int = 65_536) -> Iterator[Chunk]:
        """Python dialect: (fingerprints, payloads) per chunk of rows, hashed here."""
        yield from self._stream_python(since, chunk_rows)

    # -- raw SELECTs: every identifier through ident, values through the ORM's converters --
    def _select(
        self,
        fields: Sequence[models.Field],
        where: str = "",
        params: Sequence[Any] = (),
        extra: Sequence[str] = (),
        chunked: bool = False,
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of ``fields`` (then the ``extra`` SQL expressions), converted as the ORM would.

        The ORM quotes names with ``ops.quote_name``, which leaves an embedded double
        quote undoubled, so the engine writes these statements itself (run with a parameter
        list, ``[]`` included). ``chunked`` reads through a server-side cursor where the
        backend has one.
        """
        from django.db.models.sql.query import Query

        columns = [self._col(f) for f in fields] + list(extra)
        sql = f"SELECT {', '.join(columns)} FROM {self.table}{where}"
        connection = self.connection
        compiler = connection.ops.compiler("SQLCompiler")(Query(self.model), connection, self.alias)
        converters = compiler.get_converters([f.get_col(self.model._meta.db_table) for f in fields])
        cursor = connection.chunked_cursor() if chunked else connection.cursor()
        with cursor:
            cursor.execute(sql, list(params))
            while batch := cursor.fetchmany(10_000):
                if converters:
                    batch = compiler.apply_converters(batch, converters)
                yield from (tuple(row) for row in batch)

    def _prep(self, field: models.Field, value: Any) -> Any:
        return field.get_db_prep_value(value, self.connection, prepared=False)

    def _since_where(self, since: dt.datetime | None) -> tuple[str, list[Any]]:
        if since is None or self.updated is None:
            return "", []
        return f" WHERE {self._col(self.updated)} >= %s", [self._prep(self.updated, since)]

    def _stream_python(self, since: dt.datetime | None, chunk_rows: int) -> Iterator[Chunk]:
        import numpy as np

        columns = [*self.key, *(f for _, f, _ in self.fields)]
        width = len(self.key)
        fps: list[int] = []
        payloads: list[int] = []
        where, params = self._since_where(since)
        for values in self._select(columns, where, params, chunked=True):
            key = self.key_text(values[:width])
            fps.append(self.py_fp(key, self.py_norm(values[width:])))
            payloads.append(self.py_payload(values[:width], key))
            if len(fps) >= chunk_rows:
                yield np.array(fps, dtype=np.int64), np.array(payloads, dtype="<i8").tobytes()
                fps, payloads = [], []
        if fps:
            yield np.array(fps, dtype=np.int64), np.array(payloads, dtype="<i8").tobytes()

    # -- rows by key or payload -----------------------------------------------------------
    def _rows(self, where: str, params: Sequence[Any] = ()) -> list[Row]:
        columns = [*self.key, *(f for _, f, _ in self.fields)]
        if self.updated is not None:
            columns.append(self.updated)
        extra = [self.fp_sql(), *self.norm_sql()] if self.dialect == "sql" else []
        width = len(self.key)
        out = []
        for values in self._select(columns, where, params, extra):
            key = self.key_text(values[:width])
            raw_values = values[width : width + len(self.fields)]
            raw = {label: value for (label, _, _), value in zip(self.fields, raw_values, strict=True)}
            updated = values[width + len(self.fields)] if self.updated is not None else None
            if self.dialect == "sql":
                tail = values[len(columns) :]
                fp, norm = int(tail[0]), tuple(tail[1:])
            else:
                norm = self.py_norm(raw_values)
                fp = self.py_fp(key, norm)
            out.append(Row(key, fp, norm, raw, updated))
        return out

    def parse_key(self, key: str) -> tuple[Any, ...]:
        parts = key.split(SEPARATOR) if len(self.key) > 1 else [key]
        return tuple(f.to_python(p) for f, p in zip(self.key, parts, strict=True))

    def rows_by_keys(self, keys: Iterable[str], batch: int = 500) -> dict[str, Row]:
        keys = list(keys)
        found: dict[str, Row] = {}
        for start in range(0, len(keys), batch):
            parsed = [self.parse_key(k) for k in keys[start : start + batch]]
            params = [self._prep(f, v) for values in parsed for f, v in zip(self.key, values, strict=True)]
            if len(self.key) == 1:
                where = f" WHERE {self._col(self.key[0])} IN ({', '.join(['%s'] * len(parsed))})"
            else:
                one = "(" + " AND ".join(f"{self._col(f)} = %s" for f in self.key) + ")"
                where = " WHERE " + " OR ".join([one] * len(parsed))
            found.update((row.key, row) for row in self._rows(where, params))
        return found

    def rows_by_locators(self, locators: Sequence[bytes], since: dt.datetime | None = None) -> list[Row]:
        """The rows at ``locators`` (as ``stream`` yielded them); SQL: in the scan's snapshot."""
        if self.dialect != "sql":
            return self.rows_by_payloads([int.from_bytes(x, "little", signed=True) for x in locators], since)
        found: list[Row] = []
        for start in range(0, len(locators), 10_000):
            # Integers only, so the literal is safe; a TID Scan reads exactly these tuples.
            tids = ",".join(
                f'"({int.from_bytes(x[:4], "big")},{int.from_bytes(x[4:], "big")})"'
                for x in locators[start : start + 10_000]
            )
            found.extend(self._rows(f" WHERE {self.table}.ctid = ANY('{{{tids}}}'::tid[])"))
        return found

    def rows_by_payloads(self, payloads: Sequence[int], since: dt.datetime | None = None) -> list[Row]:
        """Rows whose payload is in ``payloads``: by key for integer keys, else one pass over the keys."""
        if not payloads:
            return []
        if self.int_key:
            return list(self.rows_by_keys([str(p) for p in payloads]).values())
        wanted = set(payloads)
        keys = []
        where, params = self._since_where(since)
        for values in self._select(self.key, where, params, chunked=True):
            key = self.key_text(values)
            if self.py_payload(values, key) in wanted:
                keys.append(key)
        return list(self.rows_by_keys(keys).values())


ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class Delta:
    """A TID range's rows written since the range cache's records (``RowSide.delta_sql``): the
    range's row count and the kept rows' TIDs when asked for, else None."""

    rows: int | None
    fps: np.ndarray
    tids: bytes
    kept: bytes | None


@dataclass(frozen=True)
class ScanPlan:
    """The queries that read one side, how many connections read them, and their snapshot."""

    units: list[tuple[str, list[Any]]]
    workers: int
    snapshot: str | None  # exported by the first connection when workers > 1
    # A full scan's TID ranges, (first block, end block or None for the last), one per unit.
    bounds: tuple[tuple[int, int | None], ...] = ()


def _parallel_workers(blocks: int, min_blocks: int) -> int:
    """Workers PostgreSQL's planner gives a parallel scan of ``blocks`` (compute_parallel_worker)."""
    if blocks < max(min_blocks, 1):
        return 0
    workers, threshold = 1, max(min_blocks, 1) * 3
    while blocks >= threshold:
        workers += 1
        threshold *= 3
    return workers
