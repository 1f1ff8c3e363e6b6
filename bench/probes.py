"""Measurements that choose the engine's algorithm (issue 3): what does each way of comparing cost?

    .venv/bin/python bench/probes.py --rows 1000000 10000000 [--keep] [--repeat 2] [--only P1,P3]

Each probe runs in a fresh subprocess (so its peak RSS is its own), both sides in parallel
threads with one psycopg 3 connection each, on tables carrying the benchmark's 300 drifted rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import datagen
import numpy as np
from common import FIELDS, PYTHON, ROW, SIDES, both, connect, peak_mb_self, run_timed, write_result
from streams import agg_chunks, copy_rows

FP = f"hashtextextended(id || chr(31) || {FIELDS}, 0)"
MD5_64 = f"('x' || left(md5({ROW}), 16))::bit(64)::bigint"


def _scalar(sql: str) -> Callable[[str, str], Any]:
    def run(url: str, table: str) -> Any:
        with connect(url) as conn:
            return conn.execute(sql.format(t=table)).fetchone()

    return run


def _aggregate(sql: str) -> dict[str, Any]:
    a, b = both(_scalar(sql))
    return {"equal": a == b}


def p2_grouped() -> dict[str, Any]:
    sql = (
        f"SELECT hashtextextended(id, 0) & 1023 AS b, count(*), sum(hashtextextended({ROW}, 0)) "
        "FROM {t} GROUP BY b"
    )

    def run(url: str, table: str) -> dict[Any, Any]:
        with connect(url) as conn:
            return {r[0]: r[1:] for r in conn.execute(sql.format(t=table))}

    a, b = both(run)
    return {"buckets_differing": sum(a.get(k) != b.get(k) for k in set(a) | set(b))}


def _only(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the values of ``a`` absent from ``b`` and the other way round (sort + searchsorted)."""
    sa, sb = np.sort(a), np.sort(b)

    def absent(x: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
        if not len(sy):
            return np.ones(len(x), bool)
        i = np.minimum(np.searchsorted(sy, sx), len(sy) - 1)
        lonely = sx[sy[i] != sx]
        # A 64K-entry bitmap of the lonely values' low bits finds their rows without sorting again.
        table = np.zeros(1 << 16, bool)
        table[lonely & 0xFFFF] = True
        mask = table[x & 0xFFFF]
        mask[mask] = np.isin(x[mask], lonely)
        return mask

    return absent(a, sa, sb), absent(b, sb, sa)


def _classify(a_keys: set[Any], b_keys: set[Any]) -> dict[str, int]:
    return {
        "missing": len(a_keys - b_keys),
        "mismatch": len(a_keys & b_keys),
        "extra": len(b_keys - a_keys),
    }


def _pair(x: np.ndarray) -> np.ndarray:
    """One 64-bit value per (key hash, row hash) pair, for set comparison."""
    k = x["f0"].astype(np.uint64)
    r = x["f1"].astype(np.uint64)
    return k ^ (r * np.uint64(0x9E3779B97F4A7C15))


def p3_pairs() -> dict[str, Any]:
    q = f"SELECT hashtextextended(id, 0), hashtextextended({ROW}, 0) FROM {{t}}"

    def run(url: str, table: str) -> np.ndarray:
        with connect(url) as conn:
            return copy_rows(conn, q.format(t=table), (8, 8))

    a, b = both(run)
    ma, mb = _only(_pair(a), _pair(b))
    return _classify(set(a["f0"][ma].tolist()), set(b["f0"][mb].tolist())) | {"rows": [len(a), len(b)]}


def _fetch(url: str, table: str, blk: np.ndarray, off: np.ndarray) -> list[tuple[Any, ...]]:
    tids = [f"({int(x)},{int(y)})" for x, y in zip(blk, off, strict=True)]
    with connect(url) as conn:
        return conn.execute(
            f"SELECT id, email, full_name, is_active FROM {table} WHERE ctid = ANY(%s::tid[])", (tids,)
        ).fetchall()


def _fetch_both(a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray, i: int) -> dict[str, int]:
    (ua, ta), (ub, tb) = SIDES
    ra = _fetch(ua, ta, a[f"blk{i}"][ma], a[f"off{i}"][ma])
    rb = _fetch(ub, tb, b[f"blk{i}"][mb], b[f"off{i}"][mb])
    return _classify({r[0] for r in ra}, {r[0] for r in rb})


def p4_pairs_ctid() -> dict[str, Any]:
    q = f"SELECT hashtextextended(id, 0), hashtextextended({ROW}, 0), ctid FROM {{t}}"

    def run(url: str, table: str) -> np.ndarray:
        with connect(url) as conn:
            return copy_rows(conn, q.format(t=table), (8, 8, 6))

    a, b = both(run)
    ma, mb = _only(_pair(a), _pair(b))
    return _fetch_both(a, b, ma, mb, 2)


def p5_fingerprint_ctid() -> dict[str, Any]:
    q = f"SELECT {FP}, ctid FROM {{t}}"

    def run(url: str, table: str) -> np.ndarray:
        with connect(url) as conn:
            return copy_rows(conn, q.format(t=table), (8, 6))

    a, b = both(run)
    ma, mb = _only(a["f0"], b["f0"])
    return _fetch_both(a, b, ma, mb, 1)


PACKED = np.dtype([("f0", ">i8"), ("blk1", ">u4"), ("off1", ">u2")])


def p7_packed_chunks() -> dict[str, Any]:
    """P5's data, but packed server-side into one bytea per block range (16 TID range scans)."""

    def run(url: str, table: str) -> np.ndarray:
        with connect(url) as conn:
            return np.concatenate(list(agg_chunks(conn, table, f"int8send({FP}) || tidsend(ctid)", PACKED)))

    a, b = both(run)
    ma, mb = _only(a["f0"], b["f0"])
    return _fetch_both(a, b, ma, mb, 1)


PROBES: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "P0": ("count(*) only: the bare scan", lambda: _aggregate("SELECT count(*) FROM {t}")),
    "P1": (
        "floor: count + sum(hashtextextended(row))",
        lambda: _aggregate(f"SELECT count(*), sum(hashtextextended({ROW}, 0)) FROM {{t}}"),
    ),
    "P2": ("GROUP BY 1024 key-hash buckets", p2_grouped),
    "P3": ("COPY binary (key hash, row hash) + NumPy diff", p3_pairs),
    "P4": ("P3 + ctid, bad rows fetched by ctid", p4_pairs_ctid),
    "P5": ("COPY binary (fingerprint, ctid) + fetch", p5_fingerprint_ctid),
    "P6a": ("P1 with md5 (64 bits of it)", lambda: _aggregate(f"SELECT count(*), sum({MD5_64}) FROM {{t}}")),
    "P6b": (
        "P1 with hashtext (32-bit)",
        lambda: _aggregate(f"SELECT count(*), sum(hashtext({ROW})) FROM {{t}}"),
    ),
    "P7": ("P5 packed by the server: string_agg per TID range", p7_packed_chunks),
}


def one(name: str) -> None:
    """Child mode: run one probe, print its figures as JSON."""
    start = time.perf_counter()
    result = PROBES[name][1]()
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mb": peak_mb_self(), "result": result}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--keep", action="store_true", help="reuse generated data of the same size")
    parser.add_argument("--repeat", type=int, default=2, help="runs per probe (first cold-ish, then warm)")
    parser.add_argument("--only", default="", help="comma-separated probe names")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one)
        return
    names = [n for n in PROBES if not args.only or n in args.only.split(",")]
    datagen.ensure_databases()
    report: dict[str, Any] = {}
    for rows in args.rows:
        loaded = datagen.ensure_rows(rows, args.keep)
        print(f"\n== {rows:,} rows (load {loaded:.1f} s, sizes MB {datagen.table_mb()}), 300 rows drifted")
        datagen.inject_drift(rows)
        try:
            report[str(rows)] = figures = {}
            for name in names:
                runs = []
                for _ in range(args.repeat):
                    timed = run_timed([PYTHON, __file__, "--one", name])
                    if timed.returncode:
                        sys.exit(f"{name} failed:\n{timed.stderr}")
                    runs.append(json.loads(timed.stdout))
                figures[name] = runs
            base = min(r["seconds"] for r in figures["P1"]) if "P1" in figures else None
            print(f"{'probe':5} {'what':52} {'runs (s)':>16} {'xP1':>6} {'peak MB':>8}  result")
            for name, runs in figures.items():
                best = min(r["seconds"] for r in runs)
                ratio = f"{best / base:6.2f}" if base else "     -"
                secs = " ".join(f"{r['seconds']:.2f}" for r in runs)
                peak = max(r["peak_mb"] for r in runs)
                print(f"{name:5} {PROBES[name][0]:52} {secs:>16} {ratio} {peak:8.0f}  {runs[-1]['result']}")
        finally:
            datagen.restore_drift(rows)
    out = write_result("probes", report)
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
