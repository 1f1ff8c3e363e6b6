"""Getting compact per-row hashes out of PostgreSQL into NumPy, two ways.

``copy_rows``: binary COPY, one CopyData message per row, read straight from libpq (psycopg's
``Copy`` iterator costs ~1.6 us a row more). ``agg_chunks``: the server packs the rows of a
block range (a TID range scan, PG 14+) into one bytea, so the client sees a few big messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
from psycopg import pq

HEADER, TRAILER = 19, 2  # PGCOPY signature + flags + extension length; int16 -1


def copy_dtype(sizes: tuple[int, ...]) -> np.dtype[Any]:
    """The binary COPY row layout for fields of fixed ``sizes`` (8 = int8, 6 = tid)."""
    fields: list[tuple[str, str]] = [("n", ">i2")]
    for i, size in enumerate(sizes):
        fields.append((f"len{i}", ">i4"))
        if size == 6:
            fields += [(f"blk{i}", ">u4"), (f"off{i}", ">u2")]
        else:
            fields.append((f"f{i}", ">i8"))
    return np.dtype(fields)


def copy_rows(conn: psycopg.Connection[Any], query: str, sizes: tuple[int, ...]) -> np.ndarray:
    """Run ``COPY (query) TO STDOUT (FORMAT binary)`` and return its rows as one structured array."""
    dtype = copy_dtype(sizes)
    pg = conn.pgconn
    pg.send_query(f"COPY ({query}) TO STDOUT (FORMAT binary)".encode())
    res = pg.get_result()
    if res is None or res.status != pq.ExecStatus.COPY_OUT:
        raise psycopg.OperationalError(pg.error_message.decode())
    arrays: list[np.ndarray] = []
    buf = bytearray()
    skip = HEADER
    while True:
        nbytes, data = pg.get_copy_data(0)
        if nbytes < 0:
            break
        buf += data
        if len(buf) >= 1 << 22:  # parse in ~4 MB blocks; a block may end mid-row
            skip = _parse(buf, skip, dtype, arrays)
    _parse(buf, skip, dtype, arrays, final=True)
    while (res := pg.get_result()) is not None:
        if res.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.OperationalError(pg.error_message.decode())
    return np.concatenate(arrays) if arrays else np.empty(0, dtype)


def _parse(
    buf: bytearray, skip: int, dtype: np.dtype[Any], out: list[np.ndarray], final: bool = False
) -> int:
    """Move the whole rows of ``buf`` (after ``skip`` header bytes) into ``out``; keep the rest."""
    usable = len(buf) - skip - (TRAILER if final else 0)
    rows = usable // dtype.itemsize
    if rows:
        out.append(np.frombuffer(buf, dtype, count=rows, offset=skip).copy())
    del buf[: skip + rows * dtype.itemsize]
    return 0


def block_ranges(conn: psycopg.Connection[Any], table: str, chunks: int) -> list[tuple[int, int]]:
    row: Any = conn.execute(
        "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int", (table,)
    ).fetchone()
    pages = int(row[0]) + 1
    step = -(-pages // chunks)
    return [(lo, lo + step) for lo in range(0, pages, step)]


def agg_chunks(
    conn: psycopg.Connection[Any], table: str, expr: str, dtype: np.dtype[Any], chunks: int = 16
) -> Iterator[np.ndarray]:
    """Yield, per block range, ``string_agg(expr)`` (fixed-size packed bytea rows) as an array."""
    pg = conn.pgconn
    for lo, hi in block_ranges(conn, table, chunks):
        sql = (
            f"SELECT string_agg({expr}, ''::bytea) FROM {table} "
            f"WHERE ctid >= '({lo},0)'::tid AND ctid < '({hi},0)'::tid"
        )
        res = pg.exec_params(sql.encode(), [], result_format=1)
        if res.status != pq.ExecStatus.TUPLES_OK:
            raise psycopg.OperationalError(pg.error_message.decode())
        value = res.get_value(0, 0)
        if value:
            yield np.frombuffer(value, dtype)
