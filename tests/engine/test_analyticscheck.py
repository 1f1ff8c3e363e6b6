"""Analytics parity against a real ClickHouse server (18.16) and chDB."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings

from consistency.backend.models import Message, ToolUsageLog
from consistency.engine import analyticsranges as ranges
from consistency.engine import repair
from consistency.engine.analyticscheck import AnalyticsRowParity
from consistency.engine.analyticsdaily import AnalyticsDailyParity
from consistency.engine.analyticsfp import MESSAGES, TOOL_USAGE, md5_64
from consistency.engine.findings import AuditContext, Finding
from consistency.stores.analytics import AnalyticsStore, close_analytics, get_analytics
from consistency.stores.analytics_schema import (
    MESSAGE_EVENT_COLUMNS,
    MESSAGE_EVENTS,
    TOOL_USAGE_EVENT_COLUMNS,
    TOOL_USAGE_EVENTS,
    ensure_schema,
    message_event_row,
    tool_usage_event_row,
)
from tests.commands import checkconsistency as run
from tests.factories import MessageFactory, ToolUsageLogFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "auth"])

MSG = AnalyticsRowParity(name="t_messages", table=MESSAGE_EVENTS)
TOOLS = AnalyticsRowParity(name="t_tools", table=TOOL_USAGE_EVENTS)
DAILY = AnalyticsDailyParity(name="t_daily")
DAY = dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)


@pytest.fixture(params=["clickhouse", "chdb"])
def analytics(request: pytest.FixtureRequest, chdb_path: Path) -> Iterator[AnalyticsStore]:
    """Settings pointing get_analytics() at a fresh database on the server or on chDB."""
    database = f"h_parity_{uuid.uuid4().hex[:8]}"
    url = settings.CLICKHOUSE_URL if request.param == "clickhouse" else f"chdb://{chdb_path}"
    config = {**settings.CONSISTENCY, "CLICKHOUSE_DATABASE": database}
    with override_settings(CLICKHOUSE_URL=url, CONSISTENCY=config):
        store = get_analytics()
        ensure_schema(store)
        try:
            yield store
        finally:
            store.execute(f"DROP DATABASE IF EXISTS `{database}`")
            close_analytics()


def export(store: AnalyticsStore, version: int = 1, skip: str | None = None) -> None:
    """Every message (but `skip`) and tool usage log as an event, the way the export writes them."""
    messages = [
        message_event_row(m, m.thread.user_id, version)
        for m in Message.objects.select_related("thread").exclude(pk=skip)
    ]
    logs = [tool_usage_event_row(t, version) for t in ToolUsageLog.objects.all()]
    store.insert(MESSAGE_EVENTS, MESSAGE_EVENT_COLUMNS, messages)
    store.insert(TOOL_USAGE_EVENTS, TOOL_USAGE_EVENT_COLUMNS, logs)


def audit(decl: Any) -> dict[str, Finding]:
    findings, _ = decl.audit(AuditContext(started_at=None, settle=0))  # type: ignore[arg-type]
    return {f.key: f for f in findings}


def test_fingerprint__same_value_in_clickhouse_and_python(analytics: AnalyticsStore) -> None:
    for spec in (MESSAGES, TOOL_USAGE):
        assert spec.fingerprint(("x",)) == md5_64("x")
    assert int(
        analytics.query("SELECT reinterpretAsInt64(reverse(unhex(substring(hex(MD5('abc')), 1, 16))))")[0][0]
    ) == md5_64("abc")
    user = UserFactory.create()
    # Keys jsonb reorders, floats it prints differently from Python, escapes, non-ASCII.
    content = [{"text": 'héllo | "q"\n', "n": [1, 2.50, 1e-05, 1e16], "aa": {"é": None, "b": True}}]
    message = MessageFactory.create(thread__user=user, content=content)
    log = ToolUsageLogFactory.create(user=user, created_at=DAY + dt.timedelta(microseconds=999_999))
    export(analytics)
    for spec, key in ((MESSAGES, message.pk), (TOOL_USAGE, log.pk)):
        inner = f"SELECT id, {spec.fp_sql()} AS f FROM `{analytics.database}`.`{spec.table}`"
        (ch_fp,) = [int(f) for i, f in analytics.query(inner) if spec.key_of(i) == key]
        (py_event,) = spec.source_rows("default", [key])
        assert ch_fp == spec.fingerprint(py_event)
        if connection.vendor == "postgresql":  # the backend side hashes in SQL there
            with connection.cursor() as cursor:
                cursor.execute(spec.pg_select("id", "f"))
                (pg_fp,) = [int(f) for i, f in cursor.fetchall() if spec.key_of(i) == key]
            assert pg_fp == ch_fp


def test_row_parity__clean_when_exported_even_with_unmerged_versions(analytics: AnalyticsStore) -> None:
    MessageFactory.create_batch(5)
    ToolUsageLogFactory.create_batch(4)
    export(analytics, version=1)
    export(analytics, version=2)  # a second, unmerged version of every row
    assert audit(MSG) == {}
    assert audit(TOOLS) == {}
    findings, figures = TOOLS.audit(AuditContext(started_at=None, settle=0))  # type: ignore[arg-type]
    assert (findings, figures["compared"], figures["target_rows"]) == ([], 4, 4)


def drift(store: AnalyticsStore) -> dict[str, str]:
    """One missing, one deleted, one extra and one changed message event.

    The missing event is never exported: an `ALTER TABLE ... DELETE` would be
    an asynchronous mutation on the server, still pending when the audit reads.
    """
    missing, deleted, changed, same = MessageFactory.create_batch(4)
    export(store, skip=missing.pk)
    gone = MessageFactory.build(thread=same.thread)
    store.insert(MESSAGE_EVENTS, MESSAGE_EVENT_COLUMNS, [message_event_row(gone, same.thread.user_id, 1)])
    store.insert(
        MESSAGE_EVENTS,
        MESSAGE_EVENT_COLUMNS,
        [message_event_row(deleted, same.thread.user_id, 2, deleted=True)],
    )
    Message.objects.filter(pk=changed.pk).update(role="assistant")
    return {"missing": missing.pk, "deleted": deleted.pk, "extra": gone.pk, "changed": changed.pk}


def test_row_parity__reports_missing_extra_and_changed_rows(analytics: AnalyticsStore) -> None:
    ids = drift(analytics)
    found = audit(MSG)
    assert {k: f.kind for k, f in found.items()} == {
        ids["missing"]: "missing",
        ids["deleted"]: "missing",
        ids["extra"]: "extra",
        ids["changed"]: "mismatch",
    }
    assert found[ids["changed"]].fields == ("role",)
    assert (found[ids["changed"]].source or {})["role"] == "assistant"


def test_row_parity__repair_dry_run_execute_idempotent(analytics: AnalyticsStore) -> None:
    ids = drift(analytics)
    findings = list(audit(MSG).values())
    actions = repair.plan(MSG, findings)
    assert {a.key: a.action for a in actions} == {
        ids["missing"]: "insert",
        ids["deleted"]: "insert",
        ids["extra"]: "delete",
        ids["changed"]: "update",
    }
    assert len(audit(MSG)) == 4  # a plan changes nothing
    logs = repair.execute(MSG, actions)
    assert all(log.verified for log in logs)
    assert audit(MSG) == {}
    again = repair.execute(MSG, actions)
    assert sorted(log.result for log in again) == ["already deleted", *["already in sync"] * 3]
    versions = analytics.query(
        f"SELECT max(version) FROM `{analytics.database}`.`{MESSAGE_EVENTS}` WHERE id = '{ids['deleted']}'"
    )
    assert int(versions[0][0]) == 3


def test_daily_parity__drills_down_to_the_rows(analytics: AnalyticsStore) -> None:
    user = UserFactory.create()
    logs = ToolUsageLogFactory.create_batch(3, user=user, created_at=DAY)
    ToolUsageLogFactory.create(user=user, created_at=DAY + dt.timedelta(days=1))
    export(analytics)
    assert audit(DAILY) == {}
    ToolUsageLog.objects.filter(pk=logs[1].pk).update(tokens_used=9999)
    found = audit(DAILY)
    key = f"{user.pk}|2026-03-01"
    assert list(found) == [key]
    assert found[key].fields == ("tokens",)
    assert found[key].detail.endswith(f"rows: {logs[1].pk}")
    assert found[key].target == {"count": 3, "tokens": 1500, "cost": 6}
    assert audit(TOOLS).keys() == {str(logs[1].pk)}


def test_command__lists_and_runs_analytics_checks(analytics: AnalyticsStore) -> None:
    code, out = run("--list", "--tag", "analytics")
    assert code == 0
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[1:]}
    assert rows == {
        "analytics_message_events": ["analytics", "clickhouse"],
        "analytics_tool_usage_daily": ["aggregate", "clickhouse"],
        "analytics_tool_usage_events": ["analytics", "clickhouse"],
    }
    drift(analytics)
    assert run("--tag", "analytics")[0] == 1


def test_command__unreachable_clickhouse_exits_2() -> None:
    with override_settings(CLICKHOUSE_URL="clickhouse://default@127.0.0.1:1/nowhere"):
        code, out = run("--tag", "analytics")
    close_analytics()
    assert code == 2
    assert "analytics_message_events" in out


def test_key_ranges__same_bucket_and_range_on_every_side(analytics: AnalyticsStore) -> None:
    """A prefix bucket is the same in Python, PostgreSQL and ClickHouse, and its range holds it."""
    thread = MessageFactory.create(id="msg_a").thread
    keys = ["msg_a", "msg_ab", "msg_abc", "msg_ac", "msg_é1", "msg_é2", "msg_'q", "msg_\U0010ffffz", "m"]
    for key in keys[1:]:
        MessageFactory.create(id=key, thread=thread)
    export(analytics)
    table = f"`{analytics.database}`.`{MESSAGE_EVENTS}`"
    for length in (5, 6, 7):  # 6 and 7 cut a character
        buckets = ranges.PrefixBuckets(length)
        expected = {k: buckets.of(k) for k in keys}
        rows = analytics.query(f"SELECT id, {buckets.ch_out(buckets.ch_sql())} FROM {table}")
        assert {i: buckets.decode(b) for i, b in rows} == expected
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT id, {buckets.pg_out(buckets.pg_sql('id'))} FROM messages")
                assert {i: buckets.decode(b) for i, b in cursor.fetchall()} == expected
        for bucket in set(expected.values()):
            inside = {k for k, b in expected.items() if b == bucket}
            found = analytics.query(f"SELECT id FROM {table} WHERE {ranges.ch_where(buckets, [bucket])}")
            assert {i for (i,) in found} == inside, bucket
            if connection.vendor == "postgresql":
                for ranged in (True, False):
                    sql, params = ranges.pg_where(buckets, [bucket], "id", ranged)
                    with connection.cursor() as cursor:
                        cursor.execute(f"SELECT id FROM messages WHERE {sql}", params)
                        assert {i for (i,) in cursor.fetchall()} == inside, (bucket, ranged)


def test_key_ranges__sized_from_the_source() -> None:
    # 10,000 keys "k0000".."k9999" and 1,000 rows a bucket wanted: 10 buckets, "k0".."k9".
    keys = [f"k{i:04d}".encode() for i in range(10_000)]
    assert ranges.prefix_length(keys, 10_000) == 2
    assert ranges.prefix_length(keys[::10], 10_000) == 2  # a sample gives the same length
    # As a sample of 10M rows, 10,000 distinct 5-byte prefixes stand for about 10M: 4 bytes.
    assert ranges.prefix_length(keys, 10_000_000) == 4
    assert ranges.byte_successor(b"a\xff") == b"b"
    assert ranges.byte_successor(b"\xff") is None
    assert ranges.successor("ab") == "ac"
    assert ranges.successor("a\U0010ffff") == "b"
    assert ranges.successor("\U0010ffff") is None


@pytest.mark.parametrize("many_ranges", [False, True])
def test_row_parity__drills_into_the_differing_key_ranges_only(
    analytics: AnalyticsStore, monkeypatch: pytest.MonkeyPatch, many_ranges: bool
) -> None:
    """Many buckets (5 rows each): only the drifted ones are read again, by range or by filter."""
    monkeypatch.setattr(ranges, "TARGET_ROWS", 5)
    if many_ranges:  # more differing buckets than ranges: one filtered scan instead
        monkeypatch.setattr(ranges, "MAX_RANGES", 1)
    thread = MessageFactory.create().thread
    for i in range(200):
        MessageFactory.create(id=f"msg_{i:03d}", thread=thread)
    logs = ToolUsageLogFactory.create_batch(60, user=UserFactory.create())
    export(analytics)
    Message.objects.filter(id__in=["msg_007", "msg_150"]).update(role="assistant")
    ToolUsageLog.objects.filter(pk=logs[30].pk).update(tokens_used=1)
    findings, figures = MSG.audit(AuditContext(started_at=None, settle=0))  # type: ignore[arg-type]
    assert {f.key: f.kind for f in findings} == {"msg_007": "mismatch", "msg_150": "mismatch"}
    assert figures["segments"] == 2
    assert figures["bucket_count"] > 10
    findings, figures = TOOLS.audit(AuditContext(started_at=None, settle=0))  # type: ignore[arg-type]
    assert [(f.key, f.kind) for f in findings] == [(str(logs[30].pk), "mismatch")]
    assert (figures["segments"], figures["compared"]) == (1, 60)
    assert figures["bucket_count"] > 5


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the page sample is PostgreSQL's")
def test_key_ranges__page_sample_of_a_large_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above SAMPLE_PAGES pages the sample is one key from each of some random pages."""
    thread = MessageFactory.create(id="msg_first").thread
    text = [{"type": "text", "text": {"value": "x" * 1500, "annotations": []}}]  # ~4 rows a page
    ids = {f"msg_{i:03d}" for i in range(120)}
    for key in ids:
        MessageFactory.create(id=key, thread=thread, content=text)
    ids.add("msg_first")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE messages")
        cursor.execute("SELECT relpages FROM pg_class WHERE relname = 'messages'")
        (pages,) = cursor.fetchone()
    assert pages > 10
    monkeypatch.setattr(ranges, "SAMPLE_PAGES", pages // 2)
    keys, rows = ranges._pg_sample("default", "messages", "id")
    assert rows == len(ids)  # the planner's estimate, exact after ANALYZE
    assert 0 < len(keys) < len(ids)
    assert {k.decode() for k in keys} <= ids
    assert len(set(keys)) == len(keys)
    assert len(keys) <= pages  # one a page
