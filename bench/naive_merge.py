"""The naive peer: stream both tables ordered by id (server-side cursors) and merge in Python.

Prints {"missing": n, "mismatch": n, "extra": n} as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from common import COLUMNS, SIDES, connect

BATCH = 10_000


def stream(url: str, table: str) -> Iterator[tuple[Any, ...]]:
    conn = connect(url)
    conn.autocommit = False  # a named (server-side) cursor lives in a transaction
    with conn, conn.cursor(name=f"naive_{table}") as cur:
        cur.itersize = BATCH
        cur.execute(f"SELECT id, {', '.join(COLUMNS)} FROM {table} ORDER BY id")
        yield from cur


def merge() -> dict[str, int]:
    counts = {"missing": 0, "mismatch": 0, "extra": 0}
    (ua, ta), (ub, tb) = SIDES
    a, b = stream(ua, ta), stream(ub, tb)
    ra, rb = next(a, None), next(b, None)
    while ra is not None or rb is not None:
        if rb is None or (ra is not None and ra[0] < rb[0]):
            counts["missing"] += 1
            ra = next(a, None)
        elif ra is None or rb[0] < ra[0]:
            counts["extra"] += 1
            rb = next(b, None)
        else:
            counts["mismatch"] += ra != rb
            ra, rb = next(a, None), next(b, None)
    return counts


if __name__ == "__main__":
    print(json.dumps(merge()))
