"""Row parity over a table and a column whose names hold a double quote, on real databases.

Django's ``ops.quote_name`` leaves an embedded ``"`` undoubled (``a"b`` becomes ``"a"b"``);
the engine writes its statements with ``quote_ident``, which doubles it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
from django.db import connections, models

from consistency.engine.declarations import RowParity, Side, bind_row_parity
from consistency.engine.registry import registry
from consistency.engine.rowdiff import diff_rows
from consistency.engine.rowside import quote_ident
from tests.commands import checkconsistency as run

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "auth"]), pytest.mark.sqlite]

TABLE = 'q"rows; DROP TABLE q_canary; --'
COLUMN = 'na"me'
UPDATED = 'up"dated'


class QuotedRow(models.Model):
    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=100, db_column=COLUMN)
    updated_at = models.DateTimeField(db_column=UPDATED)

    class Meta:
        app_label = "testapp"
        managed = False
        db_table = TABLE


def test_quote_ident__doubles_embedded_quotes_and_refuses_nul() -> None:
    assert quote_ident('a"b') == '"a""b"'
    assert quote_ident("plain") == '"plain"'
    with pytest.raises(ValueError, match="NUL"):
        quote_ident("a\x00b")


@pytest.fixture
def quoted_tables(transactional_db: None, clean_registry: None) -> Iterator[None]:
    for alias in ("auth", "default"):
        with connections[alias].cursor() as cursor:
            cursor.execute("CREATE TABLE q_canary (id int)")
            cursor.execute(
                f"CREATE TABLE {quote_ident(TABLE)} (id bigint PRIMARY KEY, {quote_ident(COLUMN)} "
                f"varchar(100) NOT NULL, {quote_ident(UPDATED)} timestamp with time zone NOT NULL)"
            )
    yield
    for alias in ("auth", "default"):
        connections[alias].close()
        with connections[alias].cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {quote_ident(TABLE)}")
            cursor.execute("DROP TABLE IF EXISTS q_canary")


def _insert(alias: str, rows: dict[int, str]) -> None:
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with connections[alias].cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {quote_ident(TABLE)} VALUES (%s, %s, %s)",
            [(i, name, at) for i, name in rows.items()],
        )


def test_row_parity__names_with_double_quotes_audit_exactly(quoted_tables: None) -> None:
    names = {i: f'row "{i}"' for i in range(1, 41)}
    _insert("auth", names)
    _insert("default", {i: n for i, n in names.items() if i != 3} | {5: "changed", 77: "extra"})
    decl = RowParity(
        name="t_quoted",
        source=Side("testapp.QuotedRow", alias="auth"),
        target=Side("testapp.QuotedRow", alias="default"),
        key=("id",),
        fields=("name",),
        updated_at=("updated_at", "updated_at"),
    )
    registry.register(decl)
    for strategy in ("aggregate", "stream"):
        findings, stats = diff_rows(
            bind_row_parity(decl), started_at=dt.datetime.now(dt.UTC), strategy=strategy
        )
        assert sorted((f.kind, f.key, f.fields) for f in findings) == [
            ("extra", "77", ()),
            ("mismatch", "5", ("name",)),
            ("missing", "3", ()),
        ]
        by_key = {f.key: f for f in findings}
        assert by_key["5"].source == {"name": 'row "5"'}
        assert by_key["5"].target == {"name": "changed"}
        assert (stats.source_rows, stats.target_rows) == (40, 40)

    code, out = run("t_quoted", "--format", "json")
    check = json.loads(out)["checks"][0]
    assert (code, check["drift_count"], check["compared"]) == (1, 3, 40)
    for alias in ("auth", "default"):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM q_canary")
            assert cursor.fetchone()[0] == 0  # the table is still there (and empty, as created)
