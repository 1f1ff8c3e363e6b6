"""Analytics side of the seed: one event per message and per tool usage log.

Events are version 1 and live (``deleted = 0``); the row mapping is the one in
``analytics_schema``, which the export and the audit use too.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from consistency.backend.models import Message, Thread, ToolUsageLog
from consistency.seed.generate import Batch
from consistency.stores.analytics import AnalyticsStore
from consistency.stores.analytics_schema import (
    MESSAGE_EVENT_COLUMNS,
    MESSAGE_EVENTS,
    TABLES,
    TOOL_USAGE_EVENT_COLUMNS,
    TOOL_USAGE_EVENTS,
    ensure_schema,
    latest_rows_sql,
    message_event_row,
    tool_usage_event_row,
)
from consistency.stores.analytics_sql import identifier

SEED_VERSION = 1


def write_batch(store: AnalyticsStore, batch: Batch, batch_size: int) -> dict[str, int]:
    """Insert the batch's message and tool usage events; rows written per table."""
    owner = {row["id"]: row["user_id"] for row in batch.rows.get(Thread, [])}
    messages = (
        message_event_row(row, owner[row["thread_id"]], SEED_VERSION) for row in batch.rows.get(Message, [])
    )
    logs = (
        tool_usage_event_row(SimpleNamespace(**row), SEED_VERSION) for row in batch.rows.get(ToolUsageLog, [])
    )
    return {
        MESSAGE_EVENTS: store.insert(MESSAGE_EVENTS, MESSAGE_EVENT_COLUMNS, messages, batch_size=batch_size),
        TOOL_USAGE_EVENTS: store.insert(
            TOOL_USAGE_EVENTS, TOOL_USAGE_EVENT_COLUMNS, logs, batch_size=batch_size
        ),
    }


def flush(store: AnalyticsStore) -> None:
    """Drop and recreate the event tables (works on every ClickHouse version)."""
    for table in TABLES:
        store.execute(f"DROP TABLE IF EXISTS {identifier(store.database)}.{identifier(table)}")
    ensure_schema(store)


def live_count(store: AnalyticsStore, table: str) -> int:
    """Ids whose latest version is live."""
    sql = latest_rows_sql(table, ["id"], database=store.database)
    return int(store.query(f"SELECT count() FROM ({sql})")[0][0])


def live_rows(store: AnalyticsStore, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    """``columns`` of the latest live version of every id in ``table``."""
    return store.query(latest_rows_sql(table, columns, database=store.database))
