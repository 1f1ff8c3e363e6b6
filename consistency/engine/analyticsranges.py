"""Key-range buckets for analytics row parity.

The first pass groups rows by a monotone function of their key, so that each
bucket is one contiguous range of keys and the drill-down into a differing
bucket is a range read on the primary key of both sides (ClickHouse tables are
``ORDER BY id``; PostgreSQL has the primary key index), not a second full pass:

- a text key: the first ``length`` bytes of its UTF-8 (``substring`` in
  ClickHouse, ``substr(convert_to(id, 'UTF8'))`` in PostgreSQL; bytes, not
  characters, because 18.16's ``substringUTF8`` miscounts 4-byte characters).
  Keys with one prefix form one range in byte order, which is ClickHouse's
  order of ``String`` and, being code point order, PostgreSQL's under a
  byte-order collation (``C``, ``POSIX``, ``C.UTF-8``, ``ucs_basic``). There the
  drill-down reads index ranges (a prefix cut inside a character widens its
  range to the whole character) and filters them by the exact prefix; under
  another collation it filters the prefixes in one scan instead.
- an integer key: ``id div width``.

``length``/``width`` is chosen from the source so that buckets hold about
``TARGET_ROWS`` rows: an integer key from its min and max, a text key from a
sample of keys (one row of each of up to ``SAMPLE_PAGES`` random pages on
PostgreSQL), estimating the number of distinct prefixes of each length with
the Haas-Stokes estimator PostgreSQL's ANALYZE uses.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import Max, Min, Model

TARGET_ROWS = 1000
MAX_BUCKETS = 65536
SAMPLE_PAGES = 5000
SAMPLE_ROWS = 5000  # other databases: keys drawn at random
#: Above this many differing buckets the drill-down filters buckets in one scan per side.
MAX_RANGES = 1000
#: PostgreSQL collations that order text by code point, as ClickHouse orders bytes.
BYTE_ORDER = {"c", "posix", "c.utf-8", "c.utf8", "ucs_basic", "pg_c_utf8"}
_MAX_CHAR = 0x10FFFF


def successor(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (None: there is none)."""
    chars = list(prefix)
    while chars and ord(chars[-1]) == _MAX_CHAR:
        chars.pop()
    if not chars:
        return None
    code = ord(chars[-1]) + 1
    chars[-1] = chr(0xE000 if 0xD800 <= code <= 0xDFFF else code)  # no surrogates in text
    return "".join(chars)


def byte_successor(prefix: bytes) -> bytes | None:
    """The least byte string above every byte string starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def ch_bytes(value: bytes) -> str:
    """A ClickHouse string literal of arbitrary bytes (``\\xHH`` escapes)."""
    return "'" + "".join(f"\\x{b:02x}" for b in value) + "'"


@dataclass(frozen=True)
class PrefixBuckets:
    """Text keys by the first ``length`` bytes of their UTF-8."""

    length: int

    def of(self, key: Any) -> bytes:
        return str(key).encode()[: self.length]

    def ch_sql(self) -> str:
        return f"substring(id, 1, {self.length})"

    def ch_out(self, bucket: str) -> str:
        """The bucket as it leaves ClickHouse, after grouping: hex text, whatever its bytes."""
        return f"hex({bucket})"

    def pg_sql(self, column: str) -> str:
        return f"substr(convert_to({column}, 'UTF8'), 1, {self.length})"

    def pg_out(self, bucket: str) -> str:
        return f"encode({bucket}, 'hex')"

    def decode(self, value: Any) -> bytes:
        return bytes.fromhex(value)

    def ch_range(self, bucket: bytes) -> str:
        if len(bucket) < self.length:  # a key shorter than the prefix is its own bucket
            return f"id = {ch_bytes(bucket)}"
        high = byte_successor(bucket)
        low = f"id >= {ch_bytes(bucket)}"
        return low if high is None else f"({low} AND id < {ch_bytes(high)})"

    def pg_range(self, bucket: bytes, column: str) -> tuple[str, list[Any]]:
        """A text range on ``column`` holding the bucket's keys (and maybe others: filter them)."""
        text = bucket.decode(errors="ignore")  # a character cut at the end is dropped
        if len(bucket) < self.length:
            return f"{column} = %s", [text]
        high = successor(text)
        if high is None:
            return f"{column} >= %s", [text]
        return f"({column} >= %s AND {column} < %s)", [text, high]

    def describe(self) -> str:
        return f"key prefix of {self.length} bytes"


@dataclass(frozen=True)
class IntBuckets:
    """Integer keys (non-negative, as ClickHouse's UInt64) by ``key div width``."""

    width: int

    def of(self, key: Any) -> int:
        return int(key) // self.width

    def ch_sql(self) -> str:
        return f"intDiv(id, {self.width})"

    def ch_out(self, bucket: str) -> str:
        return bucket

    def pg_sql(self, column: str) -> str:
        return f"({column} / {self.width})"

    def pg_out(self, bucket: str) -> str:
        return bucket

    def decode(self, value: Any) -> int:
        return int(value)

    def ch_range(self, bucket: int) -> str:
        low = int(bucket) * self.width
        return f"id = {low}" if self.width == 1 else f"(id >= {low} AND id < {low + self.width})"

    def pg_range(self, bucket: int, column: str) -> tuple[str, list[Any]]:
        low = int(bucket) * self.width
        return f"({column} >= %s AND {column} < %s)", [low, low + self.width]

    def describe(self) -> str:
        return f"key ranges of {self.width}"


Buckets = PrefixBuckets | IntBuckets


def ch_where(buckets: Buckets, chosen: Sequence[Any]) -> str:
    """A condition on ClickHouse's ``id`` holding exactly the keys of ``chosen``: key ranges."""
    return " OR ".join(buckets.ch_range(b) for b in chosen) or "0"


def pg_where(buckets: Buckets, chosen: Sequence[Any], column: str, ranged: bool) -> tuple[str, list[Any]]:
    """A PostgreSQL condition (and its parameters) on ``column`` holding exactly the keys of ``chosen``.

    Index ranges when ``ranged`` (the key column orders as ClickHouse does) and the buckets
    are few, filtered by the bucket itself (exact); else that filter alone, in one scan.
    """
    exact = f"{buckets.pg_sql(column)} = ANY(%s)"
    if not chosen:
        return "false", []
    if not (ranged and len(chosen) <= MAX_RANGES):
        return exact, [list(chosen)]
    parts, params = [], []
    for bucket in chosen:
        sql, values = buckets.pg_range(bucket, column)
        parts.append(sql)
        params.extend(values)
    return f"({' OR '.join(parts)}) AND {exact}", [*params, list(chosen)]


def wanted_groups(rows: int) -> int:
    return max(1, min(MAX_BUCKETS, rows // TARGET_ROWS))


def distinct_estimate(sample: Sequence[bytes], rows: int) -> float:
    """Haas-Stokes (Duj1): the distinct values of ``rows`` rows from a sample of them."""
    n = len(sample)
    counts = Counter(sample)
    d = len(counts)
    if n == 0:
        return 0.0
    f1 = sum(1 for c in counts.values() if c == 1)
    rows = max(rows, n)
    return n * d / (n - f1 + f1 * n / rows)


def prefix_length(sample: Sequence[bytes], rows: int) -> int:
    """The longest prefix whose distinct values among ``rows`` keys are about ``wanted_groups``."""
    groups = wanted_groups(rows)
    longest = max((len(k) for k in sample), default=1)
    chosen = 1
    for length in range(1, longest + 1):
        if distinct_estimate([k[:length] for k in sample], rows) > groups:
            break
        chosen = length
    return chosen


def byte_ordered(alias: str, table: str, column: str) -> bool:
    """True when PostgreSQL's index on ``table.column`` orders text by code point."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            """SELECT co.collname, co.collcollate, d.datcollate
               FROM pg_attribute a JOIN pg_collation co ON co.oid = a.attcollation
               JOIN pg_database d ON d.datname = current_database()
               WHERE a.attrelid = %s::regclass AND a.attname = %s""",
            [table, column],
        )
        row = cursor.fetchone()
    if row is None:
        return False
    name, collate, database = row
    locale = database if name == "default" else (collate or name)
    return str(name).lower() in BYTE_ORDER or str(locale).lower() in BYTE_ORDER


def _pg_sample(alias: str, table: str, column: str) -> tuple[list[bytes], int]:
    """Keys of one row in each of up to SAMPLE_PAGES random pages, and the estimated row count."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT relpages, reltuples FROM pg_class WHERE oid = %s::regclass", [table])
        pages, tuples = cursor.fetchone()
        if pages <= SAMPLE_PAGES:
            cursor.execute(f'SELECT "{column}" FROM "{table}"')
            keys = [str(k).encode() for (k,) in cursor.fetchall()]
            return keys, len(keys)
        percent = 100.0 * SAMPLE_PAGES / pages
        cursor.execute(
            f'SELECT DISTINCT ON ((ctid::text::point)[0]) "{column}" FROM "{table}" '
            f"TABLESAMPLE SYSTEM ({percent:.6f}) REPEATABLE (0)"
        )
        keys = [str(k).encode() for (k,) in cursor.fetchall()]
        if tuples < 0:  # never analysed
            cursor.execute(f'SELECT count(*) FROM "{table}"')
            tuples = cursor.fetchone()[0]
        return keys, int(tuples)


def choose(model: type[Model], alias: str, integer: bool) -> Buckets:
    """The buckets for ``model``'s rows on ``alias``: about TARGET_ROWS rows each."""
    manager = model._default_manager.using(alias)
    if integer:
        found = manager.aggregate(low=Min("pk"), high=Max("pk"))
        if found["low"] is None:
            return IntBuckets(1)
        span = int(found["high"]) - int(found["low"]) + 1
        rows = _row_estimate(model, alias) or manager.count()
        return IntBuckets(max(1, math.ceil(span / wanted_groups(min(rows, span)))))
    if connections[alias].vendor == "postgresql":
        keys, rows = _pg_sample(alias, model._meta.db_table, str(model._meta.pk.column))
    else:
        rows = manager.count()
        keys = [str(k).encode() for k in manager.order_by("?").values_list("pk", flat=True)[:SAMPLE_ROWS]]
    return PrefixBuckets(prefix_length(keys, rows))


def _row_estimate(model: type[Model], alias: str) -> int:
    if connections[alias].vendor != "postgresql":
        return 0
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [model._meta.db_table])
        row = cursor.fetchone()
    return max(0, int(row[0])) if row else 0
