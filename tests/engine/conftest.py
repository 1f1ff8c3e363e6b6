"""Fixtures for engine tests: the test models' tables on both aliases, committed.

Engine scans run in their own threads with their own connections, so tests use
``transaction=True`` and real, committed tables on PostgreSQL (or SQLite under
tests.settings_sqlite).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db import connections
from django.test import override_settings

from consistency.engine import rowside
from consistency.engine.rowside import quote_ident
from tests.testapp.models import TEST_MODELS

ALIASES = ("auth", "default")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _drop(alias: str) -> None:
    with connections[alias].schema_editor() as editor:
        existing = set(connections[alias].introspection.table_names())
        for model in TEST_MODELS:
            if model._meta.db_table in existing:
                editor.delete_model(model)


@pytest.fixture
def tables(transactional_db: None, django_db_blocker: object) -> Iterator[None]:
    """Create the test models' tables on both aliases for one test, drop them after."""
    for alias in ALIASES:
        _drop(alias)
        with connections[alias].schema_editor() as editor:
            for model in TEST_MODELS:
                editor.create_model(model)
    yield
    for alias in ALIASES:
        connections[alias].close()
        _drop(alias)


def shape(i: int, **overrides: object) -> dict[str, object]:
    """Deterministic field values for row ``i``."""
    values: dict[str, object] = {
        "name": f"name {i}",
        "email": f"user{i}@example.io",
        "amount": Decimal(i) / 4,
        "active": i % 3 != 0,
        "at": T0 + dt.timedelta(seconds=i, microseconds=123000),
        "data": {"i": i, "tags": ["a", "b"], "nested": {"x": 1, "y": [1, 2]}},
        "token_hash": f"secret-token-{i}",
        "updated_at": T0,
    }
    values.update(overrides)
    return values


@pytest.fixture
def parallel_scans(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Small TID ranges, and PostgreSQL willing to run a parallel scan of any table size: both
    sides are read in many ranges by several connections."""
    if any(connections[a].vendor != "postgresql" for a in ALIASES):
        pytest.skip("TID range scans on several connections are the PostgreSQL dialect")
    monkeypatch.setattr(rowside, "UNIT_ROWS", 64)
    names = [connections[a].settings_dict["NAME"] for a in ALIASES]
    with connections["default"].cursor() as cursor:
        for name in names:
            cursor.execute(f"ALTER DATABASE {quote_ident(name)} SET min_parallel_table_scan_size = 0")
    for alias in ALIASES:
        connections[alias].close()
    yield
    with connections["default"].cursor() as cursor:
        for name in names:
            cursor.execute(f"ALTER DATABASE {quote_ident(name)} RESET min_parallel_table_scan_size")


@pytest.fixture
def range_cache(tmp_path: Any, parallel_scans: None) -> Iterator[Any]:
    """A range cache directory of the test's own, with ``parallel_scans``."""
    with override_settings(CONSISTENCY={"RANGE_CACHE_DIR": str(tmp_path), "SETTLE_SECONDS": 0}):
        yield tmp_path


def flush_stats() -> None:
    """Make this thread's writes show in PostgreSQL's write counters now (they are flushed when
    a backend goes idle, at most once a second; ``pg_stat_force_next_flush`` skips the wait)."""
    for alias in ALIASES:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_stat_force_next_flush()")
            cursor.execute("SELECT 1")  # the flush runs as the backend goes idle between the two
