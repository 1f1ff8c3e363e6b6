"""Message and tool-usage changes reach ClickHouse in batches, idempotently, deletes included."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from consistency.backend.models import ToolUsageLog
from consistency.models import AnalyticsOutbox
from consistency.stores.analytics import AnalyticsStore, get_analytics
from consistency.stores.analytics_schema import ensure_schema, latest_rows_sql
from consistency.stores.errors import StoreError
from consistency.sync import analytics
from consistency.tasks import export_analytics
from tests.factories import MessageFactory, UserFactory
from tests.sync.conftest import sync_db, wait_until

pytestmark = sync_db


@pytest.fixture
def store() -> Iterator[AnalyticsStore]:
    """A fresh analytics database for this test, made current through CONSISTENCY."""
    database = f"h_sync_{uuid.uuid4().hex[:8]}"
    with override_settings(CONSISTENCY={"SETTLE_SECONDS": 0.0, "CLICKHOUSE_DATABASE": database}):
        current = get_analytics()
        ensure_schema(current)
        yield current
        current.execute(f"DROP DATABASE IF EXISTS `{database}`")


def live(store: AnalyticsStore, table: str, *columns: str) -> list[tuple[Any, ...]]:
    return sorted(store.query(latest_rows_sql(table, ["id", *columns], database=store.database)))


def versions(store: AnalyticsStore, table: str) -> list[tuple[Any, ...]]:
    sql = f"SELECT id, count() FROM `{store.database}`.`{table}` FINAL GROUP BY id ORDER BY id"
    return store.query(sql)


def test_export__changes_and_deletes_reach_clickhouse_with_no_duplicates_on_replay(
    store: AnalyticsStore, worker: object
) -> None:
    user = UserFactory.create()
    m1 = MessageFactory.create(thread__user=user, content=[{"text": "one"}])
    m2 = MessageFactory.create(thread__user=user)
    m1.content = [{"text": "one, edited"}]
    m1.save()
    m2_id = m2.pk
    m2.delete()
    log = ToolUsageLog.objects.create(user=user, tool_name="search", category="web", tokens_used=5)
    log.tokens_used = 7
    log.save()

    wait_until(lambda: AnalyticsOutbox.objects.count() == 0, what="export")
    assert live(store, "message_events", "user_id", "content") == [
        (m1.pk, user.pk, '[{"text": "one, edited"}]')
    ]
    assert live(store, "tool_usage_events", "tokens_used") == [(log.pk, 7)]
    deleted = store.query(f"SELECT id FROM `{store.database}`.message_events FINAL WHERE deleted = 1")
    assert deleted == [(m2_id,)]

    # Replay: the same changes exported again (a worker died after the insert) change nothing.
    m1.save()
    wait_until(lambda: AnalyticsOutbox.objects.count() == 0, what="second export")
    assert versions(store, "message_events") == sorted([(m1.pk, 1), (m2_id, 1)])
    assert live(store, "message_events", "content") == [(m1.pk, '[{"text": "one, edited"}]')]


def test_export__clickhouse_down_keeps_the_batch_and_the_retry_delivers_it(store: AnalyticsStore) -> None:
    user = UserFactory.create()
    ToolUsageLog.objects.bulk_create(
        [ToolUsageLog(user=user, tool_name="t", category="c", tokens_used=i) for i in range(3)]
    )
    analytics.record_tool_usage(ToolUsageLog.objects.filter(user=user))  # bulk path: explicit
    down = {"SETTLE_SECONDS": 0.0, "CLICKHOUSE_DATABASE": store.database}
    with override_settings(CLICKHOUSE_URL="clickhouse://default@127.0.0.1:1/x", CONSISTENCY=down):
        with pytest.raises(StoreError):
            analytics.export_batch()
        assert AnalyticsOutbox.objects.count() == 3  # nothing lost
    from celery.contrib.testing.worker import start_worker

    from project.celery import app

    with start_worker(app, pool="solo", perform_ping_check=False):
        export_analytics.delay()
        wait_until(lambda: AnalyticsOutbox.objects.count() == 0, what="export after ClickHouse returns")
    assert [row[1] for row in live(store, "tool_usage_events", "tokens_used")] == [0, 1, 2]
