"""The versioned analytics schema, forwards and backwards, on the ClickHouse server and on chDB."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from pytest_django.fixtures import Settings as SettingsWrapper

from consistency.stores.analytics import AnalyticsStore, close_analytics
from consistency.stores.analytics_schema import MESSAGE_EVENTS, TOOL_USAGE_EVENTS, ensure_schema
from consistency.stores.analytics_versions import LATEST, VERSIONS_TABLE, current_version, migrate_analytics


def _tables(store: AnalyticsStore) -> set[str]:
    rows = store.query("SELECT name FROM system.tables WHERE database = %(db)s", {"db": store.database})
    return {row[0] for row in rows}


def test_migrate_analytics__forwards_then_backwards_step_by_step(analytics_store: AnalyticsStore) -> None:
    assert migrate_analytics(analytics_store, 0) == []
    assert (current_version(analytics_store), _tables(analytics_store)) == (0, {VERSIONS_TABLE})
    assert migrate_analytics(analytics_store, 1) == [f"applied 1 (create {MESSAGE_EVENTS})"]
    assert (current_version(analytics_store), _tables(analytics_store)) == (
        1,
        {VERSIONS_TABLE, MESSAGE_EVENTS},
    )
    assert migrate_analytics(analytics_store) == [f"applied 2 (create {TOOL_USAGE_EVENTS})"]
    assert current_version(analytics_store) == LATEST == 2
    assert _tables(analytics_store) == {VERSIONS_TABLE, MESSAGE_EVENTS, TOOL_USAGE_EVENTS}
    assert migrate_analytics(analytics_store) == []  # idempotent at the latest version
    assert migrate_analytics(analytics_store, 0) == [
        f"reverted 2 (create {TOOL_USAGE_EVENTS})",
        f"reverted 1 (create {MESSAGE_EVENTS})",
    ]
    assert (current_version(analytics_store), _tables(analytics_store)) == (0, {VERSIONS_TABLE})
    log = analytics_store.query(
        f"SELECT version, direction FROM `{analytics_store.database}`.{VERSIONS_TABLE} ORDER BY seq"
    )
    assert log == [(1, 1), (2, 1), (1, -1), (0, -1)]


def test_migrate_analytics__records_tables_made_before_versioning(analytics_store: AnalyticsStore) -> None:
    ensure_schema(analytics_store)  # the unversioned path (seed) leaves no version behind
    assert current_version(analytics_store) == 0
    assert len(migrate_analytics(analytics_store)) == LATEST
    assert current_version(analytics_store) == LATEST


@pytest.mark.parametrize("bad", [-1, LATEST + 1])
def test_migrate_analytics__refuses_unknown_versions(analytics_store: AnalyticsStore, bad: int) -> None:
    with pytest.raises(ValueError, match=f"between 0 and {LATEST}, got {bad}"):
        migrate_analytics(analytics_store, bad)


def _point_settings_at(store: AnalyticsStore, settings: SettingsWrapper, chdb_path: Path) -> None:
    if store.kind == "chdb":
        settings.CLICKHOUSE_URL = f"chdb://{chdb_path}?database={store.database}"
    else:
        settings.CLICKHOUSE_URL = settings.CLICKHOUSE_URL.rsplit("/", 1)[0] + f"/{store.database}"


def _initstores(*args: str) -> str:
    out = StringIO()
    call_command("initstores", "--skip-vectors", *args, stdout=out)
    return out.getvalue()


def test_initstores__analytics_version_goes_back_and_forth(
    analytics_store: AnalyticsStore, settings: SettingsWrapper, chdb_path: Path
) -> None:
    _point_settings_at(analytics_store, settings, chdb_path)
    try:
        assert "schema version 2" in _initstores()
        back = _initstores("--analytics-version", "1")
        assert f"dropped table {analytics_store.database}.{TOOL_USAGE_EVENTS}; schema version 1" in back
        assert current_version(analytics_store) == 1
        assert f"created table {analytics_store.database}.{TOOL_USAGE_EVENTS}" in _initstores()
        assert "already present (schema version 2)" in _initstores()
        with pytest.raises(CommandError, match="between 0 and 2, got 9") as caught:
            _initstores("--analytics-version", "9")
        assert caught.value.returncode == 2
    finally:
        close_analytics()
