"""Deterministic test data: N equal users on both sides, drift injection and its undo.

Row ``i`` is a pure function of ``i`` (``ID``, ``EMAIL``...), so any row can be rebuilt in SQL
from its number and both databases are filled server-side from ``generate_series``.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import psycopg
from common import (
    AUTH_DB,
    AUTH_URL,
    BACKEND_DB,
    BACKEND_URL,
    PG,
    PYTHON,
    ROOT,
    SIDES,
    both,
    connect,
    django_env,
    refill,
)

ID = "md5('u' || i)::uuid::text"  # uuid-shaped strings: string keys, spread over the key range
EMAIL = "'user' || i || '@example.com'"
NAME = "'User ' || i"
ACTIVE = "mod(i, 17) <> 0"
HASHED = "'$2b$12$' || md5('p' || i) || left(md5('q' || i), 21)"  # bcrypt-sized
BASE_TS = "timestamptz '2024-01-01 00:00:00+00'"

INSERT = {
    "auth_users": f"""
        INSERT INTO auth_users (id, email, full_name, hashed_password, auth_provider, provider_data,
                                is_active, is_verified, created_at, updated_at, failed_login_attempts)
        SELECT {ID}, {EMAIL}, {NAME}, {HASHED}, 'local', jsonb_build_object(), {ACTIVE}, true,
               {BASE_TS}, {BASE_TS}, 0
        FROM {{source}}""",
    "users": f"""
        INSERT INTO users (id, email, full_name, hashed_password, is_active, is_superuser, is_developer,
                           role, permissions, plan_tier, feature_flags, created_at, updated_at)
        SELECT {ID}, {EMAIL}, {NAME}, {HASHED}, {ACTIVE}, false, false, 'user', jsonb_build_object(), 'free', jsonb_build_object(),
               {BASE_TS}, {BASE_TS}
        FROM {{source}}""",
}
SETUP = (
    "SET synchronous_commit = off; SET maintenance_work_mem = '1GB'; SET max_parallel_maintenance_workers = 1"
)
META = "CREATE TABLE IF NOT EXISTS bench_meta (key text PRIMARY KEY, value text NOT NULL)"
# Which share of rows the incremental measurement changes on both sides (about 1%).
ONE_PERCENT = "mod(abs(hashtextextended(id, 0)), 100) = 0"


def ensure_databases() -> None:
    """Create the two databases when missing and migrate them."""
    with connect(f"{PG}/postgres") as conn:
        for name in (AUTH_DB, BACKEND_DB):
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    for extra in ([], ["--database", "auth"]):
        subprocess.run(
            [PYTHON, "manage.py", "migrate", "-v0", *extra], check=True, cwd=ROOT, env=django_env()
        )
    for url, _ in SIDES:
        with connect(url) as conn:
            conn.execute(META)


def _meta(url: str) -> dict[str, str]:
    with connect(url) as conn:
        return dict(conn.execute("SELECT key, value FROM bench_meta").fetchall())


def _set_meta(url: str, **values: str) -> None:
    with connect(url) as conn:
        for key, value in values.items():
            conn.execute(
                "INSERT INTO bench_meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (key, value),
            )


def _fill(url: str, table: str, rows: int) -> None:
    """TRUNCATE and refill ``table``; indexes are dropped for the load and rebuilt with their names."""
    refill(url, table, INSERT[table].format(source=f"generate_series(1, {int(rows)}) i"), SETUP)


def ensure_rows(rows: int, keep: bool) -> float:
    """Make both tables hold the clean data set of ``rows`` rows; return the seconds spent (0 if kept)."""
    metas = [_meta(url) for url, _ in SIDES]
    if keep and all(m.get("rows") == str(rows) and m.get("state") == "clean" for m in metas):
        return 0.0
    for url, _ in SIDES:
        _set_meta(url, rows=str(rows), state="loading")
    start = time.perf_counter()
    both(_fill, rows)
    for url, _ in SIDES:
        _set_meta(url, state="clean")
    return time.perf_counter() - start


def spread(rows: int, offset: int, count: int = 100) -> list[int]:
    """``count`` row numbers spread evenly over 1..rows (their keys are spread too, being hashes)."""
    return [1 + k * (rows // count) + offset for k in range(count)]


def _ids(numbers: str) -> str:
    return f"SELECT {ID} FROM unnest({numbers}::int[]) i"


def inject_drift(rows: int) -> dict[str, int]:
    """100 rows missing from ``users``, 100 changed there, 100 extra there. Returns counts by kind."""
    missing, changed, extra = spread(rows, 3), spread(rows, 7), list(range(rows + 1, rows + 101))
    _set_meta(BACKEND_URL, state="drift")
    with connect(BACKEND_URL) as conn, conn.transaction():
        conn.execute(f"DELETE FROM users WHERE id IN ({_ids('%s')})", (missing,))
        conn.execute(
            f"UPDATE users SET full_name = full_name || ' (changed)' WHERE id IN ({_ids('%s')})",
            (changed[0::2],),
        )
        conn.execute(
            f"UPDATE users SET email = 'changed.' || email WHERE id IN ({_ids('%s')})", (changed[1::2],)
        )
        conn.execute(INSERT["users"].format(source="unnest(%s::int[]) i"), (extra,))
    return {"missing": len(missing), "mismatch": len(changed), "extra": len(extra)}


def restore_drift(rows: int) -> None:
    missing, changed, extra = spread(rows, 3), spread(rows, 7), list(range(rows + 1, rows + 101))
    with connect(BACKEND_URL) as conn, conn.transaction():
        conn.execute(f"DELETE FROM users WHERE id IN ({_ids('%s')})", (extra + changed,))
        conn.execute(INSERT["users"].format(source="unnest(%s::int[]) i"), (missing + changed,))
    _vacuum(BACKEND_URL, "users")
    _set_meta(BACKEND_URL, state="clean")


def change_one_percent() -> int:
    """Change ~1% of rows identically on both sides, stamping updated_at; returns rows changed."""
    for url, _ in SIDES:
        _set_meta(url, state="changed")
    counts = both(_update, f"full_name = full_name || '*', updated_at = now() WHERE {ONE_PERCENT}")
    # Settle the pages as the full audit finds them (VACUUM after the load): the first reader
    # of freshly updated rows pays PostgreSQL's hint-bit writes on every page they landed on
    # (~85,000 pages here), whoever that reader is; autovacuum or the application's own reads
    # normally pay it long before the next audit.
    both(_vacuum)
    return int(counts[0])


def undo_one_percent() -> None:
    both(_update, f"full_name = rtrim(full_name, '*'), updated_at = {BASE_TS} WHERE {ONE_PERCENT}")
    both(_vacuum)
    for url, _ in SIDES:
        _set_meta(url, state="clean")


def _update(url: str, table: str, assignment: str) -> int:
    with connect(url) as conn:
        conn.execute(SETUP)
        return conn.execute(f"UPDATE {table} SET {assignment}").rowcount


def _vacuum(url: str, table: str) -> None:
    with connect(url) as conn:
        conn.execute(f"VACUUM (FREEZE, ANALYZE) {table}")


def table_mb() -> dict[str, float]:
    sizes: dict[str, float] = {}
    for url, table in SIDES:
        with connect(url) as conn:
            row: Any = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (table,)).fetchone()
            sizes[table] = round(row[0] / 2**20, 1)
    return sizes


__all__ = ["AUTH_URL", "BACKEND_URL", "ensure_databases", "ensure_rows", "psycopg"]
