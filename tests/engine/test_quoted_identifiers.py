"""Row parity over a table and columns whose names hold ``"``, ``%``, blanks, semicolons and
mixed case, on real databases: every strategy, the range cache, ``--since`` and fan-out.

Django's ``ops.quote_name`` leaves an embedded ``"`` undoubled (``a"b`` becomes ``"a"b"``) and
a ``%`` in a name breaks the DB-API's parameter interpolation; the engine writes its statements
with ``quote_ident`` and runs each one with a parameter list, every ``%`` of a name doubled.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.db import connections, models

from consistency.engine import fanout
from consistency.engine.declarations import RowParity, Side, bind_row_parity
from consistency.engine.findings import AuditContext
from consistency.engine.registry import registry
from consistency.engine.rowdiff import diff_rows, make_sides
from consistency.engine.rowside import quote_ident
from consistency.engine.tablesql import ident
from consistency.models import AuditSegment
from project.celery import app as celery_app
from tests.commands import checkconsistency as run
from tests.engine.conftest import flush_stats

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "auth"]), pytest.mark.sqlite]

TABLE = 'Q"Rows 100%s; DROP TABLE q_canary; --'
KEY = 'I"d %s'
COLUMN = 'Na"me %(x)s'
UPDATED = 'Up"Dated 5%'
OLD = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
NEW = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)


class QuotedRow(models.Model):
    id = models.BigIntegerField(primary_key=True, db_column=KEY)
    name = models.CharField(max_length=100, db_column=COLUMN)
    updated_at = models.DateTimeField(db_column=UPDATED)

    class Meta:
        app_label = "testapp"
        managed = False
        db_table = TABLE


DECL = RowParity(
    name="t_quoted",
    source=Side("testapp.QuotedRow", alias="auth"),
    target=Side("testapp.QuotedRow", alias="default"),
    key=("id",),
    fields=("name",),
    updated_at=("updated_at", "updated_at"),
)


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
                f"CREATE TABLE {quote_ident(TABLE)} ({quote_ident(KEY)} bigint PRIMARY KEY, "
                f"{quote_ident(COLUMN)} varchar(100) NOT NULL, {quote_ident(UPDATED)} "
                "timestamp with time zone NOT NULL)"
            )
    registry.register(DECL)
    yield
    for alias in ("auth", "default"):
        connections[alias].close()
        with connections[alias].cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {quote_ident(TABLE)}")
            cursor.execute("DROP TABLE IF EXISTS q_canary")


def _insert(alias: str, rows: dict[int, str], at: dt.datetime = OLD) -> None:
    with connections[alias].cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {ident(TABLE)} VALUES (%s, %s, %s)", [(i, name, at) for i, name in rows.items()]
        )


def _update(alias: str, key: int, name: str, at: dt.datetime = NEW) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"UPDATE {ident(TABLE)} SET {ident(COLUMN)} = %s, {ident(UPDATED)} = %s WHERE {ident(KEY)} = %s",
            [name, at, key],
        )


def _drifted(rows: int = 40) -> None:
    """Row 3 missing from the target, 5 changed on it, 90077 only on it."""
    names = {i: f'row "{i}" 100%s' for i in range(1, rows + 1)}
    _insert("auth", names)
    _insert("default", {i: n for i, n in names.items() if i != 3} | {5: "changed %(x)s", 90_077: "extra"})


def _kinds(findings: list[Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    return sorted((f.kind, f.key, f.fields) for f in findings)


EXPECTED = [("extra", "90077", ()), ("mismatch", "5", ("name",)), ("missing", "3", ())]


def _canary_is_intact() -> None:
    for alias in ("auth", "default"):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM q_canary")
            assert cursor.fetchone()[0] == 0  # the table is still there (and empty, as created)


def test_row_parity__names_with_quotes_and_percent_signs_audit_exactly(quoted_tables: None) -> None:
    _drifted()
    for strategy in ("aggregate", "stream"):
        findings, stats = diff_rows(
            bind_row_parity(DECL), started_at=dt.datetime.now(dt.UTC), strategy=strategy
        )
        assert _kinds(findings) == EXPECTED
        by_key = {f.key: f for f in findings}
        assert by_key["5"].source == {"name": 'row "5" 100%s'}
        assert by_key["5"].target == {"name": "changed %(x)s"}
        assert (stats.source_rows, stats.target_rows) == (40, 40)

    code, out = run("t_quoted", "--format", "json")
    check = json.loads(out)["checks"][0]
    assert (code, check["drift_count"], check["compared"]) == (1, 3, 40)
    _canary_is_intact()


def test_row_parity__identical_tables_with_percent_names_agree_on_the_aggregate(
    quoted_tables: None,
) -> None:
    names = {i: f"row {i} %s" for i in range(1, 41)}
    _insert("auth", names)
    _insert("default", names)
    findings, stats = diff_rows(
        bind_row_parity(DECL), started_at=dt.datetime.now(dt.UTC), strategy="aggregate"
    )
    expected = "aggregate" if connections["auth"].vendor == "postgresql" else "stream"
    assert (findings, stats.strategy, stats.compared) == ([], expected, 40)


def test_row_parity__since_reads_the_rows_changed_after_it_through_a_percent_named_column(
    quoted_tables: None,
) -> None:
    """Row 5 changed on the target after ``since``, row 9 added to the source after it; row 7
    changed on the target with an old time stamp, so an incremental audit does not see it."""
    names = {i: f"row {i}" for i in range(1, 41)}
    _insert("auth", names)
    _insert("default", names)
    _update("default", 5, "changed 100%")
    _update("default", 7, "changed before", at=OLD)
    _insert("auth", {9_000: "new %s"}, at=NEW)
    since = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)
    for strategy in ("aggregate", "stream"):
        findings, _ = diff_rows(
            bind_row_parity(DECL), started_at=dt.datetime.now(dt.UTC), since=since, strategy=strategy
        )
        assert _kinds(findings) == [("mismatch", "5", ("name",)), ("missing", "9000", ())]

    code, out = run("t_quoted", "--since", since.isoformat(), "--format", "json")
    check = json.loads(out)["checks"][0]
    assert (code, check["drift_count"]) == (1, 2)
    _canary_is_intact()


def test_range_cache__percent_names_take_the_cached_path_then_the_range_digests(
    quoted_tables: None, range_cache: Path
) -> None:
    _drifted(rows=2000)
    flush_stats()
    audit: dict[str, Any] = {"started_at": dt.datetime.now(dt.UTC), "cache_key": DECL.name}

    first, first_stats = diff_rows(bind_row_parity(DECL), **audit)
    second, second_stats = diff_rows(bind_row_parity(DECL), **audit)
    assert (_kinds(first), first_stats.strategy) == (EXPECTED, "stream")
    assert first_stats.extra["connections"] > 2  # the sides were read in ranges, in parallel
    assert (_kinds(second), second_stats.strategy) == (EXPECTED, "cached")

    _update("default", 1500, "drifted %")
    flush_stats()
    third, third_stats = diff_rows(bind_row_parity(DECL), **audit)
    assert _kinds(third) == sorted([*EXPECTED, ("mismatch", "1500", ("name",))])
    assert third_stats.strategy == "cached+ranges+delta"  # the target's moved range, its written row
    _canary_is_intact()


@pytest.fixture
def eager_tasks() -> Iterator[None]:
    """Tasks run in this process as they are sent (no broker, no worker)."""
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = before


def _pg_only() -> None:
    if any(connections[a].vendor != "postgresql" for a in ("auth", "default")):
        pytest.skip("fan-out reads TID ranges of PostgreSQL sides")


def test_fanout__percent_names_find_exactly_the_drift_of_the_single_process_audit(
    quoted_tables: None, eager_tasks: None
) -> None:
    """Segment tasks run in this process (eagerly, as sent): scan, locate, then the confirmation."""
    _pg_only()
    _drifted(rows=2000)
    values = {f.name: getattr(DECL, f.name) for f in dataclasses.fields(DECL) if f.init}
    fanned = fanout.FannedOutRowParity(**values, segments=3)

    findings, figures = fanned.audit(AuditContext(started_at=dt.datetime.now(dt.UTC)))

    assert _kinds(findings) == EXPECTED
    assert (figures["strategy"], figures["segments"], figures["source_rows"]) == ("fanout", 6, 2000)
    assert not AuditSegment.objects.exists()
    _canary_is_intact()


def test_fanout__a_locate_segment_without_its_spill_file_scans_its_range_again(quoted_tables: None) -> None:
    """Located on another machine than its scan: the range is read again, filtered on the fingerprints."""
    _pg_only()
    _drifted()
    source, _ = make_sides(bind_row_parity(DECL))
    wanted = source.rows_by_keys(["3", "5"])
    segment = AuditSegment(
        job=uuid.uuid4(),
        check_name=DECL.name,
        side="source",
        phase=fanout.LOCATE,
        index=0,
        block_from=0,
        block_to=None,
        unit_blocks=1,
        cells=64,
        wanted=np.array(sorted(row.fp for row in wanted.values()), dtype="<i8").tobytes(),
    )

    found = fanout._locate(segment, source)

    assert sorted(found) == sorted([key, row.fp] for key, row in wanted.items())
    _canary_is_intact()
