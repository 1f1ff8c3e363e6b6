"""Versioned analytics schema: numbered steps, each with its reverse, recorded in ClickHouse.

``consistency_schema_versions`` is an append-only log (one row a step taken, in
either direction); the schema's version is the ``version`` of its newest row, 0
when there is none. Steps are idempotent (``IF [NOT] EXISTS``), so a database
made before versioning upgrades by recording the steps it already has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from .analytics import AnalyticsStore
from .analytics_schema import MESSAGE_EVENTS, TOOL_USAGE_EVENTS, create_table_sql
from .analytics_sql import identifier

VERSIONS_TABLE = "consistency_schema_versions"
_VERSION_COLUMNS = ("seq", "version", "name", "direction", "applied_at")


@dataclass(frozen=True)
class Step:
    """One schema change: ``forward`` takes the schema to ``version``, ``backward`` to ``version - 1``."""

    version: int
    name: str
    forward: Callable[[AnalyticsStore], None]
    backward: Callable[[AnalyticsStore], None]


def _create(table: str) -> Callable[[AnalyticsStore], None]:
    return lambda store: store.execute(create_table_sql(store.database, table))


def _drop(table: str) -> Callable[[AnalyticsStore], None]:
    return lambda store: store.execute(f"DROP TABLE IF EXISTS {_target(store, table)}")


STEPS: tuple[Step, ...] = (
    Step(1, f"create {MESSAGE_EVENTS}", _create(MESSAGE_EVENTS), _drop(MESSAGE_EVENTS)),
    Step(2, f"create {TOOL_USAGE_EVENTS}", _create(TOOL_USAGE_EVENTS), _drop(TOOL_USAGE_EVENTS)),
)
LATEST = STEPS[-1].version


def _target(store: AnalyticsStore, table: str) -> str:
    return f"{identifier(store.database, 'database')}.{identifier(table, 'table')}"


def _has_versions_table(store: AnalyticsStore) -> bool:
    rows = store.query(
        "SELECT count() FROM system.tables WHERE database = %(db)s AND name = %(name)s",
        {"db": store.database, "name": VERSIONS_TABLE},
    )
    return bool(rows[0][0])


def current_version(store: AnalyticsStore) -> int:
    """The version the store's schema is at; 0 when no step was ever recorded."""
    if not _has_versions_table(store):
        return 0
    rows = store.query(f"SELECT version FROM {_target(store, VERSIONS_TABLE)} ORDER BY seq DESC LIMIT 1")
    return int(rows[0][0]) if rows else 0


def _record(store: AnalyticsStore, version: int, name: str, direction: int) -> None:
    last = store.query(f"SELECT max(seq) FROM {_target(store, VERSIONS_TABLE)}")
    seq = int(last[0][0] or 0) + 1
    now = datetime.now(UTC).replace(microsecond=0)
    store.insert(VERSIONS_TABLE, _VERSION_COLUMNS, [(seq, version, name, direction, now)])


def migrate_analytics(store: AnalyticsStore, target: int | None = None) -> list[str]:
    """Move the schema to ``target`` (default: LATEST), forwards or backwards; return the steps taken."""
    goal = LATEST if target is None else target
    if isinstance(goal, bool) or not isinstance(goal, int) or not 0 <= goal <= LATEST:
        raise ValueError(f"analytics schema version must be between 0 and {LATEST}, got {target!r}")
    store.execute(
        f"CREATE TABLE IF NOT EXISTS {_target(store, VERSIONS_TABLE)} (seq UInt64, version UInt32, "
        "name String, direction Int8, applied_at DateTime('UTC')) ENGINE = MergeTree ORDER BY seq"
    )
    current = current_version(store)
    taken: list[str] = []
    for step in STEPS:
        if current < step.version <= goal:
            step.forward(store)
            _record(store, step.version, step.name, 1)
            taken.append(f"applied {step.version} ({step.name})")
    for step in reversed(STEPS):
        if goal < step.version <= current:
            step.backward(store)
            _record(store, step.version - 1, step.name, -1)
            taken.append(f"reverted {step.version} ({step.name})")
    return taken
