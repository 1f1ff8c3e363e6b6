"""The analytics store on both back ends: types, parameters, inserts, errors."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from consistency.stores.analytics import (
    AnalyticsStore,
    ChdbStore,
    ClickHouseServerStore,
    connect,
    get_analytics,
)
from consistency.stores.analytics_sql import sql_literal, substitute
from consistency.stores.errors import StoreError

HOSTILE = [
    "it's",
    "back\\slash",
    "\\'",
    "ends with a backslash\\",
    "semi;colon'); DROP TABLE t; --",
    'double "quotes"',
    "unicode é ∑ 中文 🙂",
    "new\nline\ttab\rreturn",
    "nul\0byte",
    "%(other)s and %s",
    "",
]

# One SELECT whose every column has a different type; both back ends must agree.
TYPED_SELECT = (
    "SELECT toUInt64(18446744073709551615), toInt64(-5), toInt32(7), toUInt8(1), toFloat64(1.5), "
    "'text', toDate('2024-02-29'), toDateTime('2024-02-29 23:59:58', 'UTC'), toDateTime(1700000000), "
    "CAST(NULL AS Nullable(String)), [1, 2, 3], toDecimal64(1.25, 2), "
    "toUUID('00000000-0000-0000-0000-00000000002a')"
)
TYPED_EXPECTED = (
    18446744073709551615,
    -5,
    7,
    1,
    1.5,
    "text",
    date(2024, 2, 29),
    datetime(2024, 2, 29, 23, 59, 58, tzinfo=UTC),
    datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
    None,
    [1, 2, 3],
    Decimal("1.25"),
    UUID(int=42),
)


def test_query__returns_the_same_python_types_on_both_back_ends(analytics_store: AnalyticsStore) -> None:
    (row,) = analytics_store.query(TYPED_SELECT)
    assert row == TYPED_EXPECTED
    assert [type(v) for v in row] == [type(v) for v in TYPED_EXPECTED]
    assert (row[7].tzinfo, row[8].tzinfo) == (UTC, UTC)


@pytest.mark.parametrize("value", HOSTILE)
def test_query__round_trips_hostile_string_parameters(analytics_store: AnalyticsStore, value: str) -> None:
    assert analytics_store.query("SELECT %(v)s, length(%(v)s)", {"v": value}) == [
        (value, len(value.encode()))
    ]


def test_insert__hostile_strings_are_stored_and_found_by_parameter(analytics_store: AnalyticsStore) -> None:
    analytics_store.execute("CREATE TABLE t (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
    inserted = analytics_store.insert("t", ["id", "s"], list(enumerate(HOSTILE)))
    assert inserted == len(HOSTILE)
    assert analytics_store.query("SELECT id, s FROM t ORDER BY id") == list(enumerate(HOSTILE))
    for i, value in enumerate(HOSTILE):
        assert analytics_store.query("SELECT id FROM t WHERE s = %(v)s", {"v": value}) == [(i,)]
    assert analytics_store.query("SELECT count() FROM t") == [(len(HOSTILE),)]


def test_insert__round_trips_rows_in_batches(analytics_store: AnalyticsStore) -> None:
    analytics_store.execute(
        "CREATE TABLE t (id UInt64, n Int64, d Date, ts DateTime('UTC'), f Float64, flag UInt8) "
        "ENGINE = MergeTree ORDER BY id"
    )
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [
        (i, -i, date(2024, 1, 1) + timedelta(days=i), start + timedelta(hours=i), i / 4, i % 2)
        for i in range(25)
    ]
    assert analytics_store.insert("t", ["id", "n", "d", "ts", "f", "flag"], iter(rows), batch_size=7) == 25
    assert analytics_store.query("SELECT id, n, d, ts, f, flag FROM t ORDER BY id") == rows
    assert analytics_store.query(
        "SELECT count() FROM system.parts WHERE database = %(db)s AND table = 't' AND active",
        {"db": analytics_store.database},
    ) != [(0,)]


def test_insert__takes_naive_and_foreign_zone_datetimes_as_instants(analytics_store: AnalyticsStore) -> None:
    analytics_store.execute("CREATE TABLE t (id UInt64, ts DateTime('UTC')) ENGINE = MergeTree ORDER BY id")
    plus_two = timezone(timedelta(hours=2))
    analytics_store.insert(
        "t",
        ["id", "ts"],
        [(1, datetime(2024, 5, 1, 12, 0)), (2, datetime(2024, 5, 1, 14, 0, tzinfo=plus_two))],
    )
    expected = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert analytics_store.query("SELECT id, ts FROM t ORDER BY id") == [(1, expected), (2, expected)]
    assert analytics_store.query("SELECT id FROM t WHERE ts = %(ts)s ORDER BY id", {"ts": expected}) == [
        (1,),
        (2,),
    ]


def test_insert__refuses_a_table_name_that_is_not_an_identifier(analytics_store: AnalyticsStore) -> None:
    with pytest.raises(ValueError, match="table 't; DROP' is not a plain identifier"):
        analytics_store.insert("t; DROP", ["id"], [(1,)])


def test_query__failure_is_a_store_error_naming_the_back_end(analytics_store: AnalyticsStore) -> None:
    with pytest.raises(StoreError) as caught:
        analytics_store.query("SELECT * FROM no_such_table")
    assert caught.value.store == analytics_store.kind
    assert "no_such_table" in str(caught.value)
    assert "Stack trace" not in str(caught.value)


def test_store__creates_its_database_on_first_use(analytics_store: AnalyticsStore) -> None:
    assert analytics_store.query("SELECT currentDatabase()") == [(analytics_store.database,)]
    assert analytics_store.created_database is True


def test_server_store__unreachable_server_is_a_store_error_without_the_password() -> None:
    store = ClickHouseServerStore("clickhouse://default:s3cret-pw@127.0.0.1:1/h1_nowhere", connect_timeout=2)
    with pytest.raises(StoreError) as caught:
        store.ping()
    assert caught.value.store == "clickhouse"
    assert "127.0.0.1:1" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    assert "***" in str(caught.value)


def test_server_store__wrong_password_is_a_store_error_without_the_password(clickhouse_url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(clickhouse_url)
    url = parts._replace(netloc=f"nobody_h1:s3cret-pw@{parts.hostname}:{parts.port or 9000}").geturl()
    with pytest.raises(StoreError) as caught:
        connect(url).ping()
    assert caught.value.store == "clickhouse"
    assert "s3cret-pw" not in str(caught.value)


def test_chdb_store__second_path_in_one_process_is_a_store_error(
    chdb_path: Path, analytics_database: str, tmp_path: Path
) -> None:
    store = ChdbStore(chdb_path, analytics_database)
    store.ping()  # holds the process' chDB session open on chdb_path
    try:
        with pytest.raises(StoreError, match="one path per process") as caught:
            ChdbStore(tmp_path / "other").ping()
        assert caught.value.store == "chdb"
    finally:
        store.execute(f"DROP DATABASE {analytics_database}")
        store.close()


def test_connect__chooses_the_back_end_and_database_from_the_url(chdb_path: Path) -> None:
    server = connect("clickhouse://default@127.0.0.1:9000/h1_named")
    embedded = connect(f"chdb://{chdb_path}?database=h1_named")
    assert (server.kind, server.database) == ("clickhouse", "h1_named")
    assert (embedded.kind, embedded.database) == ("chdb", "h1_named")
    assert connect(f"chdb://{chdb_path}").database == "analytics"
    assert connect("clickhouse://default@127.0.0.1:9000/h1_named", "h1_other").database == "h1_other"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:s3cret-pw@h/db", "expected clickhouse://"),
        ("chdb://relative/path", "chdb:///abs/path"),
        ("chdb:///abs?color=red", "unknown option"),
        ("clickhouse://default@127.0.0.1:9000/bad-name", "not a plain identifier"),
    ],
)
def test_connect__refuses_bad_urls_clearly(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        connect(url)
    assert "s3cret-pw" not in str(caught.value)


def test_get_analytics__is_cached_and_follows_settings(settings: SettingsWrapper, chdb_path: Path) -> None:
    settings.CLICKHOUSE_URL = "clickhouse://default@127.0.0.1:9000/h1_cached"
    first = get_analytics()
    assert get_analytics() is first
    settings.CLICKHOUSE_URL = f"chdb://{chdb_path}?database=h1_cached"
    second = get_analytics()
    assert (second.kind, second.database) == ("chdb", "h1_cached")
    settings.CONSISTENCY = {"CLICKHOUSE_DATABASE": "h1_override"}
    assert get_analytics().database == "h1_override"


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        (None, "NULL"),
        (True, "1"),
        (False, "0"),
        (-12, "-12"),
        (0.1, "0.1"),
        (float("nan"), "nan"),
        (Decimal("1.250"), "1.250"),
        ("a'b\\c\nd", "'a\\'b\\\\c\\nd'"),
        (
            datetime(2024, 1, 2, 5, 4, 5, 999, tzinfo=timezone(timedelta(hours=2))),
            "toDateTime('2024-01-02 03:04:05', 'UTC')",
        ),
        (datetime(2024, 1, 2, 3, 4, 5), "toDateTime('2024-01-02 03:04:05', 'UTC')"),
        (date(2024, 1, 2), "toDate('2024-01-02')"),
        (["a", 1], "['a', 1]"),
        (("a",), "('a',)"),
        (UUID(int=1), "'00000000-0000-0000-0000-000000000001'"),
    ],
)
def test_sql_literal__renders_each_type(value: object, literal: str) -> None:
    assert sql_literal(value) == literal


def test_substitute__names_the_bad_or_missing_parameter() -> None:
    with pytest.raises(ValueError, match="parameter 'blob': no ClickHouse literal for a bytes"):
        substitute("SELECT %(blob)s", {"blob": b"x"})
    with pytest.raises(ValueError, match="parameter 'missing' is used in the SQL but not given"):
        substitute("SELECT %(missing)s", {"given": 1})
    with pytest.raises(ValueError, match="parameter 'ids': an empty list"):
        substitute("SELECT 1 WHERE x IN %(ids)s", {"ids": ()})
    assert substitute("SELECT '50%'", None) == "SELECT '50%'"
    assert substitute("SELECT '50%%', %(n)s", {"n": 1}) == "SELECT '50%', 1"
