"""Read one side of a row parity check: fingerprints in bulk, rows by key.

Two dialects, one per pair of sides (so both sides always hash alike):
- ``sql``: both sides are PostgreSQL. The database normalises and hashes each
  row (``hashtextextended``) and streams (fingerprint, payload) pairs by binary
  COPY, 26 bytes a row, parsed by NumPy without a Python loop per row.
- ``python``: any other pair (SQLite, mixed). Rows are read in chunks and
  hashed in Python with the same normalisers' Python rendering.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import BooleanField, Q
from django.db.models.expressions import RawSQL

from consistency.engine.normalizers import SEPARATOR, Normalizer

KEY_SEPARATOR = "\x1e"
_COPY_HEADER = 19
_COPY_ROW = np.dtype(
    [("n", ">i2"), ("l1", ">i4"), ("fp", ">i8"), ("l2", ">i4"), ("payload", ">i8")]
)  # itemsize 26: no padding, so np.frombuffer can read COPY's wire format directly
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
        self._qn = connections[alias].ops.quote_name
        self.table = self._qn(model._meta.db_table)

    @property
    def label(self) -> str:
        return f"{self.model._meta.db_table}@{self.alias}"

    @property
    def connection(self) -> BaseDatabaseWrapper:
        """This thread's connection: scans run in their own threads, each with its own."""
        return connections[self.alias]

    # -- SQL building (PostgreSQL dialect). Every identifier is quoted. --------------
    def _col(self, field: models.Field) -> str:
        return f"{self.table}.{self._qn(str(field.column))}"

    def key_sql(self) -> str:
        parts = [f"CAST({self._col(f)} AS TEXT)" for f in self.key]
        return f" || chr({ord(SEPARATOR)}) || ".join(parts)

    def norm_sql(self) -> list[str]:
        return [normalizer.sql(self._col(field)) for _, field, normalizer in self.fields]

    def fp_sql(self) -> str:
        row = f" || chr({ord(SEPARATOR)}) || ".join(self.norm_sql())
        return f"hashtextextended({self.key_sql()} || chr({ord(KEY_SEPARATOR)}) || {row}, 0)"

    def payload_sql(self) -> str:
        if self.int_key:
            return f"CAST({self._col(self.key[0])} AS BIGINT)"
        return f"hashtextextended({self.key_sql()}, 1)"

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
        """(rows, XOR of fingerprints) computed by the database in one scan (SQL dialect only).

        An XOR over unique keys is as good a set digest as a sum, and PostgreSQL's
        ``bit_xor`` on bigint is cheaper than ``sum`` (which widens to numeric).
        """
        where, params = self._since_sql(since)
        sql = f"SELECT count(*), COALESCE(bit_xor({self.fp_sql()}), 0) FROM {self.table}{where}"
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows, digest = cursor.fetchone()
        return int(rows), int(digest)

    def estimate_rows(self) -> int:
        if self.connection.vendor == "postgresql":
            with self.connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                    [self.model._meta.db_table],
                )
                found = cursor.fetchone()
            if found and found[0] > 0:
                return int(found[0])
        return self.model._default_manager.using(self.alias).count()

    def stream(
        self, since: dt.datetime | None = None, chunk_rows: int = 65_536
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (fingerprints, payloads) int64 arrays in chunks, one scan of the table."""
        if self.dialect == "sql" and self.connection.pg_version >= 140000:  # type: ignore[attr-defined]
            yield from self._stream_chunks(since)
        elif self.dialect == "sql":
            yield from self._stream_copy(since, chunk_rows)
        else:
            yield from self._stream_python(since, chunk_rows)

    def _stream_chunks(
        self, since: dt.datetime | None, chunks: int = 48
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Fingerprints packed by the server, one bytea per physical block range.

        Per-row COPY costs the client a message a row; here PostgreSQL packs each
        TID range (a TID Range Scan, PostgreSQL 14+) into one ``string_agg`` blob of
        16-byte (fingerprint, payload) pairs that NumPy reads in place. The ranges
        run in one REPEATABLE READ transaction, so they see one snapshot.
        """
        where, params = self._since_sql(since)
        extra = where.replace(" WHERE ", " AND ", 1)
        packed = f"string_agg(int8send({self.fp_sql()}) || int8send({self.payload_sql()}), ''::bytea)"
        with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute(
                "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::bigint",
                [self.model._meta.db_table],
            )
            blocks = int(cursor.fetchone()[0])
            step = max(1, -(-blocks // chunks))
            starts = list(range(0, max(blocks, 1), step))
            for i, start in enumerate(starts):
                upper = "" if i == len(starts) - 1 else f" AND ctid < '({start + step},0)'::tid"
                cursor.execute(
                    f"SELECT {packed} FROM {self.table} WHERE ctid >= '({start},0)'::tid{upper}{extra}",
                    params,
                )
                blob = cursor.fetchone()[0]
                if blob:
                    pairs = np.frombuffer(bytes(blob), dtype=">i8").astype(np.int64).reshape(-1, 2)
                    yield pairs[:, 0], pairs[:, 1]

    def _stream_copy(
        self, since: dt.datetime | None, chunk_rows: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        where, params = self._since_sql(since)
        sql = f"COPY (SELECT {self.fp_sql()}, {self.payload_sql()} FROM {self.table}{where}) TO STDOUT (FORMAT BINARY)"
        self.connection.ensure_connection()
        raw = self.connection.connection
        block = _COPY_ROW.itemsize * chunk_rows
        with raw.cursor() as cursor, cursor.copy(sql, params or None) as copy:
            pending = bytearray()
            header_left = _COPY_HEADER
            for data in copy:
                pending += data
                if header_left:
                    if len(pending) < header_left:
                        continue
                    del pending[:header_left]
                    header_left = 0
                if len(pending) >= block:
                    usable = len(pending) - len(pending) % _COPY_ROW.itemsize
                    yield self._parse(pending[:usable])
                    del pending[:usable]
            if len(pending) >= 2:
                del pending[-2:]  # the trailer: a field count of -1
            if pending:
                yield self._parse(pending)

    @staticmethod
    def _parse(buffer: bytes | bytearray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.frombuffer(bytes(buffer), dtype=_COPY_ROW)
        return rows["fp"].astype(np.int64), rows["payload"].astype(np.int64)

    def _values_qs(self, since: dt.datetime | None = None) -> models.QuerySet:
        qs = self.model._default_manager.using(self.alias).all()
        if since is not None and self.updated is not None:
            qs = qs.filter(**{f"{self.updated.name}__gte": since})
        return qs

    def _stream_python(
        self, since: dt.datetime | None, chunk_rows: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        names = [f.attname for f in self.key] + [f.attname for _, f, _ in self.fields]
        width = len(self.key)
        fps: list[int] = []
        payloads: list[int] = []
        for values in self._values_qs(since).values_list(*names).iterator(chunk_size=10_000):
            key = self.key_text(values[:width])
            fps.append(self.py_fp(key, self.py_norm(values[width:])))
            payloads.append(self.py_payload(values[:width], key))
            if len(fps) >= chunk_rows:
                yield np.array(fps, dtype=np.int64), np.array(payloads, dtype=np.int64)
                fps, payloads = [], []
        if fps:
            yield np.array(fps, dtype=np.int64), np.array(payloads, dtype=np.int64)

    # -- rows by key or payload -----------------------------------------------------------
    def _annotated(self, qs: models.QuerySet) -> models.QuerySet:
        if self.dialect != "sql":
            return qs
        extra = {"_fp": RawSQL(self.fp_sql(), ())}
        extra.update({f"_n{i}": RawSQL(sql, ()) for i, sql in enumerate(self.norm_sql())})
        return qs.annotate(**extra)

    def _rows(self, qs: models.QuerySet) -> list[Row]:
        names = [f.attname for f in self.key] + [f.attname for _, f, _ in self.fields]
        if self.updated is not None:
            names.append(self.updated.attname)
        width = len(self.key)
        annotations = []
        if self.dialect == "sql":
            annotations = ["_fp"] + [f"_n{i}" for i in range(len(self.fields))]
        out = []
        for values in self._annotated(qs).values_list(*names, *annotations):
            key = self.key_text(values[:width])
            raw_values = values[width : width + len(self.fields)]
            raw = {label: value for (label, _, _), value in zip(self.fields, raw_values, strict=True)}
            updated = values[width + len(self.fields)] if self.updated is not None else None
            if self.dialect == "sql":
                tail = values[len(names) :]
                fp, norm = int(tail[0]), tuple(tail[1:])
            else:
                norm = self.py_norm(raw_values)
                fp = self.py_fp(key, norm)
            out.append(Row(key, fp, norm, raw, updated))
        return out

    def parse_key(self, key: str) -> tuple[Any, ...]:
        parts = key.split(SEPARATOR) if len(self.key) > 1 else [key]
        return tuple(f.to_python(p) for f, p in zip(self.key, parts, strict=True))

    def rows_by_keys(self, keys: Iterable[str], batch: int = 1000) -> dict[str, Row]:
        keys = list(keys)
        found: dict[str, Row] = {}
        base = self.model._default_manager.using(self.alias).all()
        for start in range(0, len(keys), batch):
            parsed = [self.parse_key(k) for k in keys[start : start + batch]]
            if len(self.key) == 1:
                qs = base.filter(**{f"{self.key[0].name}__in": [p[0] for p in parsed]})
            else:
                cond = Q()
                for values in parsed:
                    cond |= Q(**{f.name: v for f, v in zip(self.key, values, strict=True)})
                qs = base.filter(cond)
            found.update((row.key, row) for row in self._rows(qs))
        return found

    def rows_by_payloads(self, payloads: Sequence[int], since: dt.datetime | None = None) -> list[Row]:
        """Rows whose payload is in ``payloads``: by index for integer keys, else one filtered scan."""
        if not payloads:
            return []
        if self.int_key:
            return list(self.rows_by_keys([str(p) for p in payloads]).values())
        wanted = set(payloads)
        if self.dialect == "sql":
            # A constant array (not a bound parameter) lets PostgreSQL hash the lookup
            # instead of searching the list for every row; the values are integers.
            literal = ",".join(str(int(p)) for p in sorted(wanted))
            hit = RawSQL(
                f"{self.payload_sql()} = ANY(ARRAY[{literal}]::bigint[])", (), output_field=BooleanField()
            )
            return self._rows(self._values_qs(since).annotate(_hit=hit).filter(_hit=True))
        names = [f.attname for f in self.key]
        keys = []
        for values in self._values_qs(since).values_list(*names).iterator(chunk_size=10_000):
            key = self.key_text(values)
            if self.py_payload(values, key) in wanted:
                keys.append(key)
        return list(self.rows_by_keys(keys).values())


ProgressFn = Callable[[int], None]
