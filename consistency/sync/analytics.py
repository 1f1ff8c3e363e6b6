"""Export message and tool-usage changes to ClickHouse in batches.

A change writes an ``AnalyticsOutbox`` row (the event's fields and a version
taken from the clock in microseconds, strictly increasing in the process) in the
writer's transaction on ``default``; a task exports pending rows in batches. The
batch is claimed with ``SKIP LOCKED`` and removed only after ClickHouse accepted
it, so a failed insert leaves it pending (the task retries with backoff while
ClickHouse is down) and a replay writes the same (id, version) rows again, which
``ReplacingMergeTree(version)`` collapses: readers use FINAL (latest_rows_sql).
Deletes are rows with ``deleted = 1``. Signals record ORM saves and deletes;
bulk paths call :func:`record_messages` / :func:`record_tool_usage`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.utils.dateparse import parse_datetime

from consistency.backend.models import Message, Thread, ToolUsageLog
from consistency.cachekeys import json_value
from consistency.models import AnalyticsOutbox
from consistency.stores.analytics import get_analytics
from consistency.stores.analytics_schema import (
    MESSAGE_EVENT_COLUMNS,
    MESSAGE_EVENTS,
    TOOL_USAGE_EVENT_COLUMNS,
    TOOL_USAGE_EVENTS,
    TOOL_USAGE_SOURCE_FIELDS,
    message_event_row,
    tool_usage_event_row,
)
from consistency.sync.conf import sync_setting

BACKEND_ALIAS = "default"
_clock_lock = threading.Lock()
_last_version = 0


def next_version() -> int:
    """Microseconds since the epoch, strictly increasing within this process."""
    global _last_version
    with _clock_lock:
        _last_version = max(time.time_ns() // 1000, _last_version + 1)
        return _last_version


def _message_fields(message: Message, user_id: str) -> dict[str, Any]:
    return {
        "id": message.pk,
        "thread_id": message.thread_id,
        "user_id": user_id,
        "role": message.role,
        "assistant_id": message.assistant_id,
        "run_id": message.run_id,
        "content": message.content,
        "created_at": message.created_at,
    }


def _tool_fields(log: ToolUsageLog) -> dict[str, Any]:
    values = {name: getattr(log, name) for name in TOOL_USAGE_SOURCE_FIELDS}
    return {**values, "created_at": json_value(log.created_at)}


def _record(table: str, rows: list[dict[str, Any]], deleted: bool) -> None:
    AnalyticsOutbox.objects.using(BACKEND_ALIAS).bulk_create(
        AnalyticsOutbox(table=table, row={**row, "deleted": deleted}, version=next_version()) for row in rows
    )
    if rows:
        transaction.on_commit(trigger_export, using=BACKEND_ALIAS)


def record_messages(messages: Iterable[Message], *, deleted: bool = False) -> None:
    """Queue message events (call in the transaction that changed them)."""
    messages = list(messages)
    owners = dict(
        Thread.objects.using(BACKEND_ALIAS)
        .filter(pk__in={m.thread_id for m in messages})
        .values_list("pk", "user_id")
    )
    _record(MESSAGE_EVENTS, [_message_fields(m, owners.get(m.thread_id) or "") for m in messages], deleted)


def record_tool_usage(logs: Iterable[ToolUsageLog], *, deleted: bool = False) -> None:
    """Queue tool-usage events (call in the transaction that changed them)."""
    _record(TOOL_USAGE_EVENTS, [_tool_fields(log) for log in logs], deleted)


def _event_row(table: str, row: dict[str, Any], version: int) -> tuple[Any, ...]:
    if table == MESSAGE_EVENTS:
        return message_event_row(row, row["user_id"], version, deleted=row["deleted"])
    return tool_usage_event_row(
        {**row, "created_at": parse_datetime(row["created_at"])}, version, deleted=row["deleted"]
    )


COLUMNS = {MESSAGE_EVENTS: MESSAGE_EVENT_COLUMNS, TOOL_USAGE_EVENTS: TOOL_USAGE_EVENT_COLUMNS}


def export_batch(limit: int | None = None) -> int:
    """Export up to ``limit`` pending changes; raises StoreError (and keeps them) if ClickHouse fails."""
    limit = int(limit or sync_setting("ANALYTICS_BATCH_SIZE"))
    with transaction.atomic(using=BACKEND_ALIAS):
        pending = list(
            AnalyticsOutbox.objects.using(BACKEND_ALIAS)
            .select_for_update(skip_locked=True)
            .order_by("id")[:limit]
        )
        if not pending:
            return 0
        by_table: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for change in pending:
            by_table[change.table].append(_event_row(change.table, change.row, change.version))
        store = get_analytics()
        for table, rows in by_table.items():
            store.insert(table, COLUMNS[table], rows)
        AnalyticsOutbox.objects.using(BACKEND_ALIAS).filter(pk__in=[c.pk for c in pending]).delete()
    return len(pending)


def export_pending(limit: int | None = None, max_batches: int = 100) -> int:
    """Export batches until nothing is pending; returns the number of changes exported."""
    total = 0
    for _ in range(max_batches):
        done = export_batch(limit)
        total += done
        if done == 0:
            break
    return total


def trigger_export() -> None:
    """Ask a worker to export now; if the broker is down, the periodic sweep exports later."""
    from consistency.tasks import export_analytics

    with contextlib.suppress(Exception):  # the broker is down: the sweep covers it
        export_analytics.apply_async(retry=False)
