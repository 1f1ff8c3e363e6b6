"""Connections, timing and the shared SQL of the benchmark (databases bench_auth and bench_backend,
or BENCH_AUTH_DB and BENCH_BACKEND_DB)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
# BENCH_AUTH_DB / BENCH_BACKEND_DB: another pair of databases, so that two benchmarks can keep their data.
AUTH_DB = os.environ.get("BENCH_AUTH_DB", "bench_auth")
BACKEND_DB = os.environ.get("BENCH_BACKEND_DB", "bench_backend")
AUTH_URL, BACKEND_URL = f"{PG}/{AUTH_DB}", f"{PG}/{BACKEND_DB}"
# The two sides: (database url, table). Source first, as in the `users` declaration.
SIDES = ((AUTH_URL, "auth_users"), (BACKEND_URL, "users"))
COLUMNS = ("email", "full_name", "is_active")
# The row image every hash-based measurement uses: the compared columns of issue 3.
ROW = "concat_ws('|', id, email, full_name, is_active::text)"
FIELDS = "concat_ws('|', email, full_name, is_active::text)"

T = TypeVar("T")


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, **kwargs)


def refill(url: str, table: str, insert: str, setup: str = "") -> None:
    """TRUNCATE ``table`` and run ``insert``, its indexes and unique constraints dropped for the load.

    They are rebuilt after with their names and definitions, which is several times faster
    than maintaining them row by row; then VACUUM (FREEZE, ANALYZE) settles the pages.
    """
    with connect(url) as conn:
        if setup:
            conn.execute(setup)
        cons = conn.execute(
            """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
               WHERE conrelid = %s::regclass AND contype IN ('p', 'u')""",
            (table,),
        ).fetchall()
        idx = conn.execute(
            """SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s
               AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)""",
            (table, table),
        ).fetchall()
        conn.execute(f"TRUNCATE {table} CASCADE")
        for name, _ in idx:
            conn.execute(f'DROP INDEX "{name}"')
        for name, _ in cons:
            conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        conn.execute(insert)
        for name, definition in cons:
            conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        for _, definition in idx:
            conn.execute(definition)
        conn.execute(f"VACUUM (FREEZE, ANALYZE) {table}")


def both(fn: Any, *args: Any) -> list[Any]:
    """Run ``fn(url, table, *args)`` for both sides in parallel threads, return both results."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(fn, url, table, *args) for url, table in SIDES]
        return [f.result() for f in futures]


def django_env() -> dict[str, str]:
    """The environment that points manage.py at the benchmark databases."""
    env = dict(os.environ)
    env["DATABASE_URL"] = BACKEND_URL
    env["AUTH_DATABASE_URL"] = AUTH_URL
    return env


@dataclass(frozen=True)
class Timed:
    """A finished child process: wall seconds, its own peak RSS, exit code and output."""

    seconds: float
    peak_mb: float
    returncode: int
    stdout: str
    stderr: str


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> Timed:
    """Run ``cmd``, measuring wall time and that child's peak RSS (os.wait4, not all children)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Timed(
            seconds,
            usage.ru_maxrss / 1024,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def peak_mb_self() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(kind: str, result: Any) -> Path:
    """Write one run's figures to ``bench/results/<kind>-<date>.json``; return the path."""
    out = ROOT / "bench" / "results" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return out
