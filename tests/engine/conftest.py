"""Fixtures for engine tests: the test models' tables on both aliases, committed.

Engine scans run in their own threads with their own connections, so tests use
``transaction=True`` and real, committed tables on PostgreSQL (or SQLite under
tests.settings_sqlite).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import pytest
from django.db import connections

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
