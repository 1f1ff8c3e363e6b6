"""The analytics schema on both back ends: idempotent DDL, row mapping, latest rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import connection

from consistency.stores.analytics import AnalyticsStore
from consistency.stores.analytics_schema import (
    MESSAGE_EVENT_COLUMNS,
    MESSAGE_EVENTS,
    TOOL_USAGE_EVENT_COLUMNS,
    TOOL_USAGE_EVENTS,
    canonical_json,
    ensure_schema,
    latest_rows_sql,
    message_event_row,
    tool_usage_event_row,
)


def _message(**overrides: Any) -> dict[str, Any]:
    message = {
        "id": "msg_1",
        "thread_id": "thread_1",
        "role": "user",
        "assistant_id": None,
        "run_id": None,
        "content": [{"type": "text", "text": {"value": "héllo", "annotations": []}}],
        "created_at": 1_700_000_000,
    }
    return message | overrides


def _log(**overrides: Any) -> dict[str, Any]:
    log = {
        "id": 7,
        "user_id": "user_1",
        "tool_name": "search",
        "category": "web",
        "execution_time_ms": 120,
        "tokens_used": 3000,
        "cost_cents": 2,
        "status": "success",
        "created_at": datetime(2024, 3, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    }
    return log | overrides


def test_ensure_schema__creates_database_and_tables_then_nothing(analytics_store: AnalyticsStore) -> None:
    db = analytics_store.database
    assert ensure_schema(analytics_store) == [
        f"database {db}",
        f"table {db}.{MESSAGE_EVENTS}",
        f"table {db}.{TOOL_USAGE_EVENTS}",
    ]
    assert ensure_schema(analytics_store) == []
    tables = analytics_store.query(
        "SELECT name, engine FROM system.tables WHERE database = %(db)s ORDER BY name", {"db": db}
    )
    assert tables == [(MESSAGE_EVENTS, "ReplacingMergeTree"), (TOOL_USAGE_EVENTS, "ReplacingMergeTree")]


def test_ensure_schema__columns_have_the_declared_types(analytics_store: AnalyticsStore) -> None:
    ensure_schema(analytics_store)
    db = analytics_store.database
    # DESCRIBE, not system.columns: 18.16's system.columns has no column position.
    message = [row[:2] for row in analytics_store.query(f"DESCRIBE TABLE {db}.{MESSAGE_EVENTS}")]
    tool = [row[:2] for row in analytics_store.query(f"DESCRIBE TABLE {db}.{TOOL_USAGE_EVENTS}")]
    assert tuple(name for name, _ in message) == MESSAGE_EVENT_COLUMNS
    assert tuple(name for name, _ in tool) == TOOL_USAGE_EVENT_COLUMNS
    assert dict(message)["created_at"] == "DateTime('UTC')"
    assert (dict(tool)["id"], dict(tool)["cost_cents"], dict(tool)["deleted"]) == ("UInt64", "Int64", "UInt8")


def test_message_event_row__maps_a_message_in_column_order() -> None:
    row = message_event_row(_message(), "user_1", 3)
    assert dict(zip(MESSAGE_EVENT_COLUMNS, row, strict=True)) == {
        "id": "msg_1",
        "thread_id": "thread_1",
        "user_id": "user_1",
        "role": "user",
        "assistant_id": "",
        "run_id": "",
        "content": '[{"text": {"value": "héllo", "annotations": []}, "type": "text"}]',
        "created_at": datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
        "version": 3,
        "deleted": 0,
    }
    assert message_event_row(SimpleNamespace(**_message()), "user_1", 3) == row
    assert message_event_row(_message(), "user_1", 4, deleted=True)[-2:] == (4, 1)


JSON_VALUES = [
    [{"type": "text", "text": {"value": "héllo", "annotations": []}}],
    {"b": 1, "a": 2, "aa": [1.5, 2.50, 1e-05, 1e16, 1e20, -0.0, 100.0, 12345678901234567890, True, None]},
    {"é": "x", "z": 'q"\\\n\t\x01\x7f\u2028 é', "": {}},
    "text",
    -3,
    [],
    {1: "int key"},
    5e-324,
    -1.25e-7,
]


@pytest.mark.django_db
@pytest.mark.parametrize("value", JSON_VALUES)
def test_canonical_json__is_the_text_postgresql_prints_for_jsonb(value: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("jsonb is PostgreSQL's")
    with connection.cursor() as cursor:
        cursor.execute("SELECT (%s::text)::jsonb::text", [json.dumps(value)])
        (printed,) = cursor.fetchone()
    assert canonical_json(value) == printed


def test_canonical_json__equal_values_equal_text_and_clear_errors() -> None:
    assert canonical_json({"b": [1, {"y": 2, "x": 1}], "a": None}) == canonical_json(
        {"a": None, "b": [1, {"x": 1, "y": 2}]}
    )
    with pytest.raises(ValueError, match="no JSON form"):
        canonical_json({"n": float("nan")})
    with pytest.raises(TypeError, match="no JSON form for a set"):
        canonical_json({"s": {1}})


def test_tool_usage_event_row__truncates_to_seconds_in_utc() -> None:
    local = datetime(2024, 4, 1, 1, 59, 59, 500, tzinfo=timezone(timedelta(hours=2)))
    row = tool_usage_event_row(_log(created_at=local), 1)
    assert row == (
        7,
        "user_1",
        "search",
        "web",
        120,
        3000,
        2,
        "success",
        datetime(2024, 3, 31, 23, 59, 59, tzinfo=UTC),
        1,
        0,
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: message_event_row(_message(created_at="yesterday"), "u", 1), "created_at must be epoch"),
        (lambda: message_event_row(_message(), "u", -1), "version must be a non-negative int"),
        (lambda: tool_usage_event_row(_log(created_at=1_700_000_000), 1), "created_at must be a datetime"),
    ],
)
def test_event_rows__refuse_bad_values_by_name(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_events__round_trip_with_the_same_types(analytics_store: AnalyticsStore) -> None:
    ensure_schema(analytics_store)
    messages = [message_event_row(_message(id=f"msg_{i}", run_id=f"run_{i}"), "user_1", 1) for i in range(3)]
    logs = [tool_usage_event_row(_log(id=i), 1) for i in range(3)]
    assert analytics_store.insert(MESSAGE_EVENTS, MESSAGE_EVENT_COLUMNS, messages) == 3
    assert analytics_store.insert(TOOL_USAGE_EVENTS, TOOL_USAGE_EVENT_COLUMNS, logs) == 3
    cols = ", ".join(MESSAGE_EVENT_COLUMNS)
    assert analytics_store.query(f"SELECT {cols} FROM {MESSAGE_EVENTS} ORDER BY id") == messages
    cols = ", ".join(TOOL_USAGE_EVENT_COLUMNS)
    assert analytics_store.query(f"SELECT {cols} FROM {TOOL_USAGE_EVENTS} ORDER BY id") == logs
    partitions = analytics_store.query(
        "SELECT DISTINCT partition FROM system.parts WHERE database = %(db)s AND table = %(t)s AND active",
        {"db": analytics_store.database, "t": TOOL_USAGE_EVENTS},
    )
    assert partitions == [("202403",)]


def test_latest_rows_sql__reads_unmerged_versions_and_deletes(analytics_store: AnalyticsStore) -> None:
    ensure_schema(analytics_store)
    # Merges stopped: every version stays in its own part, as between two server merges.
    analytics_store.execute(f"SYSTEM STOP MERGES {analytics_store.database}.{MESSAGE_EVENTS}")
    versions = [
        [message_event_row(_message(id=i, role="user"), "u", 1) for i in ("a", "b", "c")],
        [message_event_row(_message(id="a", role="assistant"), "u", 2)],
        [message_event_row(_message(id="b"), "u", 2, deleted=True)],
        [message_event_row(_message(id="c", role="stale"), "u", 0)],  # an older version, replayed late
    ]
    for batch in versions:
        analytics_store.insert(MESSAGE_EVENTS, MESSAGE_EVENT_COLUMNS, batch)
    parts = analytics_store.query(
        "SELECT count() FROM system.parts WHERE database = %(db)s AND table = %(t)s AND active",
        {"db": analytics_store.database, "t": MESSAGE_EVENTS},
    )
    assert parts == [(4,)]
    sql = latest_rows_sql(MESSAGE_EVENTS, ("id", "role", "version"), database=analytics_store.database)
    assert analytics_store.query(sql + " ORDER BY id") == [("a", "assistant", 2), ("c", "user", 1)]
    filtered = latest_rows_sql(MESSAGE_EVENTS, ("id",), where="role = %(role)s")
    assert analytics_store.query(filtered, {"role": "user"}) == [("c",)]
    wrapped = f"SELECT count(), max(version) FROM ({sql})"
    assert analytics_store.query(wrapped) == [(2, 2)]
    # A PREWHERE on the key still sees every version of the rows it keeps.
    keyed = latest_rows_sql(
        MESSAGE_EVENTS, ("id", "role"), database=analytics_store.database, key_where="id IN ('a', 'b')"
    )
    assert analytics_store.query(keyed + " ORDER BY id") == [("a", "assistant")]


def test_latest_rows_sql__refuses_non_identifiers() -> None:
    with pytest.raises(ValueError, match="column 'id, secret' is not a plain identifier"):
        latest_rows_sql(MESSAGE_EVENTS, ("id, secret",))
