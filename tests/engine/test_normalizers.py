"""Each normaliser renders the same canonical text in PostgreSQL SQL and in Python."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D
from typing import Any

import pytest
from django.db import connections

from consistency.engine.normalizers import (
    NULL_MARK,
    Boolean,
    Decimal,
    Email,
    Integer,
    Json,
    Normalizer,
    Text,
    Timestamp,
)

UTC = dt.UTC
PLUS2 = dt.timezone(dt.timedelta(hours=2))

CASES: list[tuple[Normalizer, str, Any, str]] = [
    (Text(), "text", None, ""),
    (Text(), "text", "", ""),
    (Text(null_is_empty=False), "text", None, NULL_MARK),
    (Text(strip=True), "text", "  padded  ", "padded"),
    (Text(unicode="NFC"), "text", "cafe\u0301", "caf\u00e9"),
    (Text(), "text", "caf\u00e9 \u2603 \U0001f600", "caf\u00e9 \u2603 \U0001f600"),
    (Email(), "text", "  Mixed.Case@Example.IO ", "mixed.case@example.io"),
    (Email(), "text", None, ""),
    (Email(), "text", "\u00c9mile@\u00c9xample.IO", "\u00c9mile@\u00c9xample.io"),  # only A-Z is folded
    (Boolean(), "boolean", True, "1"),
    (Boolean(), "boolean", False, "0"),
    (Boolean(), "boolean", None, NULL_MARK),
    (Integer(), "bigint", -42, "-42"),
    (Integer(), "bigint", None, NULL_MARK),
    (Decimal(places=2), "numeric", D("1.5"), "1.50"),
    (Decimal(places=2), "numeric", D("2.345"), "2.35"),
    (Decimal(places=2), "numeric", D("-2.345"), "-2.35"),
    (Decimal(places=0), "numeric", D("2.5"), "3"),
    (Timestamp("s"), "timestamptz", dt.datetime(2026, 3, 1, 12, 0, 0, 999999, tzinfo=UTC), "1772366400"),
    (
        Timestamp("ms"),
        "timestamptz",
        dt.datetime(2026, 3, 1, 14, 0, 0, 123456, tzinfo=PLUS2),
        "1772366400123",
    ),
    (
        Timestamp("us"),
        "timestamptz",
        dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
        "1772366400123456",
    ),
    (Timestamp("ms"), "timestamptz", dt.datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC), "-1"),
    (Timestamp("ms"), "timestamptz", None, NULL_MARK),
]


@pytest.mark.parametrize(("normalizer", "sql_type", "value", "expected"), CASES)
def test_normalizer__python_rendering(
    normalizer: Normalizer, sql_type: str, value: Any, expected: str
) -> None:
    assert normalizer.py(value) == expected


@pytest.mark.django_db(databases=["default"])
@pytest.mark.parametrize(("normalizer", "sql_type", "value", "expected"), CASES)
def test_normalizer__sql_rendering_matches_python(
    normalizer: Normalizer, sql_type: str, value: Any, expected: str
) -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute(
            f"SELECT {normalizer.sql('v')} FROM (SELECT CAST(%s AS {sql_type}) AS v) AS t", [value]
        )
        (rendered,) = cursor.fetchone()
    assert rendered == expected


@pytest.mark.django_db(databases=["default"])
def test_json__sql_rendering_ignores_key_order_and_spacing() -> None:
    sql = Json().sql("CAST(%s AS JSONB)")
    with connections["default"].cursor() as cursor:
        cursor.execute(
            f"SELECT {sql}, {sql}", ['{"b": 1, "a": [1, {"y": 2, "x": 1}]}', '{"a":[1,{"x":1,"y":2}],"b":1}']
        )
        first, second = cursor.fetchone()
    assert first == second


def test_json__python_rendering_ignores_key_order() -> None:
    assert Json().py({"b": 1, "a": {"y": 2, "x": 1}}) == Json().py('{"a": {"x": 1, "y": 2}, "b": 1}')
    assert Json().py({"a": 1}) != Json().py({"a": 2})


def test_timestamp__rejects_an_unknown_precision() -> None:
    with pytest.raises(ValueError, match="precision"):
        Timestamp("minutes")
