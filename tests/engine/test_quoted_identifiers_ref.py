"""Reference parity and repairs over tables and columns whose names hold ``"``, ``%``, blanks,
semicolons and mixed case, on real databases.

Django's ``ops.quote_name`` leaves an embedded ``"`` undoubled and a ``%`` in a name breaks
the DB-API's parameter interpolation; the engine writes these statements with ``quote_ident``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections, models, transaction
from django.db.models.signals import post_delete, post_save

from consistency.backend.models import Analysis, AnalysisResult, Thread, User
from consistency.engine import repair
from consistency.engine.declarations import ReferenceParity, Repair, RowParity, Side
from consistency.engine.findings import Finding
from consistency.engine.refcheck import find_orphans
from consistency.engine.registry import registry
from consistency.engine.rowside import quote_ident
from consistency.engine.tablesql import ident
from consistency.models import Drift, RepairLog
from tests.commands import checkconsistency as run
from tests.factories import AnalysisFactory, AnalysisResultFactory, ThreadFactory, UserFactory

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "auth"]), pytest.mark.sqlite]

PARENTS = 'Q"Parents 100%s; DROP TABLE q_canary; --'
CHILDREN = 'q"Children %(x)s 5%; DROP TABLE q_canary; --'
ROWS = 'Q"Rows Off; DROP TABLE q_canary; --'
PCT_ROWS = 'Q"Rows 50%s Off; DROP TABLE q_canary; --'
P_ID, C_ID, C_REF = 'I"d %s', 'Child "Id" %', 'Pa"rent; %(x)s'
R_KEY, R_NAME, R_NOTE, R_UPDATED = 'K"ey', 'Na"me', 'No"te; --', 'Up"Dated At'
AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class QRefParent(models.Model):
    id = models.BigIntegerField(primary_key=True, db_column=P_ID)

    class Meta:
        app_label = "testapp"
        managed = False
        db_table = PARENTS


class QRefChild(models.Model):
    id = models.BigIntegerField(primary_key=True, db_column=C_ID)
    parent = models.ForeignKey(
        QRefParent, on_delete=models.DO_NOTHING, db_constraint=False, null=True, db_column=C_REF
    )

    class Meta:
        app_label = "testapp"
        managed = False
        db_table = CHILDREN


class QRepairRow(models.Model):
    id = models.BigIntegerField(primary_key=True, db_column=R_KEY)
    name = models.CharField(max_length=100, db_column=R_NAME)
    note = models.CharField(max_length=100, db_column=R_NOTE)
    updated_at = models.DateTimeField(db_column=R_UPDATED)

    class Meta:
        app_label = "testapp"
        managed = False
        db_table = ROWS


class QPercentRow(models.Model):
    id = models.BigIntegerField(primary_key=True, db_column='K"ey %s')
    name = models.CharField(max_length=100, db_column='Na"me 100%')
    note = models.CharField(max_length=100, db_column='No"te; %(x)s')
    updated_at = models.DateTimeField(db_column='Up"Dated %%')

    class Meta:
        app_label = "testapp"
        managed = False
        db_table = PCT_ROWS


def _rows_ddl(model: type[models.Model]) -> str:
    key, name, note, updated = (quote_ident(str(f.column)) for f in model._meta.concrete_fields)
    return (
        f"CREATE TABLE {quote_ident(model._meta.db_table)} ({key} bigint PRIMARY KEY, "
        f"{name} varchar(100) NOT NULL, {note} varchar(100) NOT NULL, {updated} timestamp with time zone NOT NULL)"
    )


DDL = (
    f"CREATE TABLE {quote_ident(PARENTS)} ({quote_ident(P_ID)} bigint PRIMARY KEY)",
    f"CREATE TABLE {quote_ident(CHILDREN)} ({quote_ident(C_ID)} bigint PRIMARY KEY, {quote_ident(C_REF)} bigint)",
    _rows_ddl(QRepairRow),
    _rows_ddl(QPercentRow),
)


@pytest.fixture
def quoted_tables(transactional_db: None, clean_registry: None) -> Iterator[None]:
    for alias in ("auth", "default"):
        with connections[alias].cursor() as cursor:
            cursor.execute("CREATE TABLE q_canary (id int)")
            cursor.execute("INSERT INTO q_canary VALUES (1)")
            for statement in DDL:
                cursor.execute(statement)  # no parameters: a % here is a plain character
    yield
    for alias in ("auth", "default"):
        connections[alias].close()
        with connections[alias].cursor() as cursor:
            for table in (PARENTS, CHILDREN, ROWS, PCT_ROWS):
                cursor.execute(f"DROP TABLE IF EXISTS {quote_ident(table)}")
            cursor.execute("DROP TABLE IF EXISTS q_canary")


def _write(alias: str, table: str, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        marks = ", ".join(["%s"] * len(rows[0]))
        with connections[alias].cursor() as cursor:
            cursor.executemany(f"INSERT INTO {ident(table)} VALUES ({marks})", rows)


def _read(alias: str, table: str) -> list[tuple[Any, ...]]:
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT * FROM {quote_ident(table)} ORDER BY 1")
        return [tuple(row) for row in cursor.fetchall()]


def _canaries_survive() -> None:
    for alias in ("auth", "default"):
        assert _read(alias, "q_canary") == [(1,)]


def _children(orphans: dict[int, int]) -> list[tuple[int, int | None]]:
    """Children 1..40 pointing at parents 1..20 (every fifth at none), then ``orphans``."""
    rows: list[tuple[int, int | None]] = [(i, None if i % 5 == 0 else 1 + i % 20) for i in range(1, 41)]
    return rows + list(orphans.items())


ORPHANS = {101: 31, 102: 31, 103: 32, 104: 33}


@pytest.mark.parametrize("parent_alias", ["default", "auth"], ids=["anti-join", "across-aliases"])
def test_reference_parity__quoted_names_find_exactly_the_orphans(
    quoted_tables: None, parent_alias: str
) -> None:
    _write(parent_alias, PARENTS, [(i,) for i in range(1, 31)])
    _write("default", CHILDREN, _children(ORPHANS))
    decl = ReferenceParity(
        name="t_q_refs",
        child=Side("testapp.QRefChild", alias="default"),
        field="parent",
        parent=Side("testapp.QRefParent", alias=parent_alias),
    )
    registry.register(decl)

    findings, stats = find_orphans(decl)
    assert sorted((f.kind, f.key, f.source) for f in findings) == [
        ("orphan", str(key), {"parent_id": ref}) for key, ref in sorted(ORPHANS.items())
    ]
    refs = [ref for _, ref in _children(ORPHANS) if ref is not None]
    # The anti-join counts the non-null references; across aliases, the distinct ones.
    compared = len(refs) if parent_alias == "default" else len(set(refs))
    assert stats == {"compared": compared, "candidates": 3}

    code, out = run("t_q_refs", "--format", "json")
    check = json.loads(out)["checks"][0]
    assert (code, check["drift_count"]) == (1, 4)

    _write(parent_alias, PARENTS, [(31,), (32,), (33,)])
    assert find_orphans(decl)[0] == []
    assert run("t_q_refs")[0] == 0
    _canaries_survive()


def _orphan_repair(repair: Repair) -> ReferenceParity:
    decl = ReferenceParity(
        name=f"t_q_{repair.value}",
        child=Side("testapp.QRefChild", alias="default"),
        field="parent",
        parent=Side("testapp.QRefParent", alias="auth"),
        repair=repair,
    )
    registry.register(decl)
    return decl


@pytest.mark.parametrize("fix", [Repair.DETACH_ORPHAN, Repair.DELETE_ORPHAN])
def test_repair__orphans_over_quoted_names_dry_run_then_execute_once(
    quoted_tables: None, fix: Repair
) -> None:
    _write("auth", PARENTS, [(i,) for i in range(1, 31)])
    _write("default", CHILDREN, _children(ORPHANS))
    decl = _orphan_repair(fix)
    before = _read("default", CHILDREN)

    code, out = run(decl.name, "--repair")
    assert code == 1
    assert f"Plan (dry run, nothing changed): {decl.name}, 4 action(s)" in out
    assert _read("default", CHILDREN) == before
    assert RepairLog.objects.count() == 0

    code, out = run(decl.name, "--repair", "--execute")
    assert "repaired and re-verified 4 of 4" in out
    if fix == Repair.DETACH_ORPHAN:
        expected = [(key, None if key in ORPHANS else ref) for key, ref in before]
    else:
        expected = [(key, ref) for key, ref in before if key not in ORPHANS]
    assert _read("default", CHILDREN) == expected
    outcomes = sorted(RepairLog.objects.values_list("key", "result", "verified"))
    verb = "detached" if fix == Repair.DETACH_ORPHAN else "deleted"
    assert outcomes == [(str(key), f"{verb} 1", True) for key in sorted(ORPHANS)]
    assert set(Drift.objects.values_list("status", flat=True)) == {"repaired"}

    code, out = run(decl.name, "--repair", "--execute")
    assert code == 0, out
    assert RepairLog.objects.count() == 4  # nothing left to repair: nothing applied twice
    assert _read("default", CHILDREN) == expected
    assert _read("auth", PARENTS) == [(i,) for i in range(1, 31)]
    _canaries_survive()


def _source_wins(name: str, model: str) -> RowParity:
    decl = RowParity(
        name=name,
        source=Side(model, alias="auth"),
        target=Side(model, alias="default"),
        key=("id",),
        fields=("name",),
        copy_on_repair=("note", "updated_at"),
        updated_at=("updated_at", "updated_at"),
        repair=Repair.SOURCE_WINS,
    )
    registry.register(decl)
    return decl


def _drifted_rows(table: str) -> list[tuple[Any, ...]]:
    """Write 20 source rows; the target lacks 3, differs at 5 (name and note) and has 77 extra.
    The source rows, as the database returns them."""
    at = {alias: connections[alias].ops.adapt_datetimefield_value(AT) for alias in ("auth", "default")}
    source = [(i, f'na"me %s {i}', f"note; {i}%") for i in range(1, 21)]
    target = [row for row in source if row[0] != 3]
    target[3] = (5, "changed", "stale")
    target.append((77, "extra", "gone"))
    # Times as Django writes them (SQLite: naive UTC text), so the copies compare equal.
    _write("auth", table, [(*row, at["auth"]) for row in source])
    _write("default", table, [(*row, at["default"]) for row in target])
    return _read("auth", table)


@pytest.fixture
def saved_and_deleted() -> Iterator[list[tuple[str, int]]]:
    """The save and delete signals ``QRepairRow`` receives, as (signal, key)."""
    seen: list[tuple[str, int]] = []

    def saved(instance: QRepairRow, created: bool, **kwargs: Any) -> None:
        seen.append(("created" if created else "saved", instance.pk))

    def deleted(instance: QRepairRow, **kwargs: Any) -> None:
        seen.append(("deleted", instance.pk))

    post_save.connect(saved, sender=QRepairRow, dispatch_uid="t_q_saved")
    post_delete.connect(deleted, sender=QRepairRow, dispatch_uid="t_q_deleted")
    yield seen
    post_save.disconnect(sender=QRepairRow, dispatch_uid="t_q_saved")
    post_delete.disconnect(sender=QRepairRow, dispatch_uid="t_q_deleted")


def test_repair__source_wins_over_quoted_names_changes_exactly_the_drifted_rows(
    quoted_tables: None, saved_and_deleted: list[tuple[str, int]]
) -> None:
    source_rows = _drifted_rows(ROWS)
    _source_wins("t_q_rows", "testapp.QRepairRow")
    before = _read("default", ROWS)

    code, out = run("t_q_rows", "--repair")
    assert code == 1
    assert "Plan (dry run, nothing changed): t_q_rows, 3 action(s)" in out
    assert _read("default", ROWS) == before
    assert saved_and_deleted == []

    code, out = run("t_q_rows", "--repair", "--execute")
    assert "repaired and re-verified 3 of 3" in out
    assert _read("default", ROWS) == source_rows  # the name, and the copied note and time
    assert sorted(RepairLog.objects.values_list("key", "action", "result", "verified")) == [
        ("3", "insert", "inserted", True),
        ("5", "update", "updated 1", True),
        ("77", "delete", "deleted 1", True),
    ]
    assert sorted(saved_and_deleted) == [("created", 3), ("deleted", 77)]  # as save() and delete() send

    code, out = run("t_q_rows", "--repair", "--execute")
    assert code == 0, out
    assert RepairLog.objects.count() == 3  # nothing left to repair: nothing applied twice
    assert run("t_q_rows")[0] == 0
    assert (_read("auth", ROWS), _read("default", ROWS)) == (source_rows, source_rows)
    _canaries_survive()


def test_repair__source_wins_statements_take_percent_signs_in_names(quoted_tables: None) -> None:
    source_rows = _drifted_rows(PCT_ROWS)
    decl = _source_wins("t_q_percent", "testapp.QPercentRow")
    plan = repair.plan_rows(
        decl,
        [
            Finding(decl.name, "missing", "3"),
            Finding(decl.name, "mismatch", "5", ("name",), source={"name": 'na"me %s 5'}),
            Finding(decl.name, "extra", "77"),
        ],
    )
    with transaction.atomic(using="default"):
        assert [repair.apply_row(decl, action) for action in plan] == ["inserted", "updated 1", "deleted 1"]
    assert _read("default", PCT_ROWS) == source_rows
    # Again: the row is there (an update that changes nothing), the extra row is gone.
    assert [repair.apply_row(decl, action) for action in plan] == ["updated 1", "updated 1", "deleted 0"]
    assert _read("default", PCT_ROWS) == source_rows
    _canaries_survive()


def test_repair__source_wins_from_the_audit_over_percent_names_then_the_audit_is_clean(
    quoted_tables: None,
) -> None:
    """The command end to end on the ``%`` table: row parity's audit finds the drift, the repair
    plan comes from it, executing it makes the target equal, and the audit then finds nothing."""
    source_rows = _drifted_rows(PCT_ROWS)
    _source_wins("t_q_percent", "testapp.QPercentRow")

    _code, out = run("t_q_percent", "--repair", "--execute")
    assert "repaired and re-verified 3 of 3" in out, out
    assert _read("default", PCT_ROWS) == source_rows
    assert sorted(RepairLog.objects.values_list("key", "action", "result")) == [
        ("3", "insert", "inserted"),
        ("5", "update", "updated 1"),
        ("77", "delete", "deleted 1"),
    ]
    code, out = run("t_q_percent")
    assert code == 0, out  # no drift left
    _canaries_survive()


def test_repair__orphan_deletes_keep_the_orms_cascades_and_signals(transactional_db: None) -> None:
    """A delete the ORM cascades stays with its collector; a plain one still sends its signals."""
    gone, kept = UserFactory.create(), UserFactory.create()
    orphan, other = AnalysisFactory.create(user=gone), AnalysisFactory.create(user=kept)
    results = [AnalysisResultFactory.create(analysis=a).pk for a in (orphan, orphan, other)]
    thread = ThreadFactory.create(user=gone)
    User.objects.filter(pk=gone.pk).delete()
    deleted: list[str] = []

    def thread_deleted(instance: Thread, **kwargs: Any) -> None:
        deleted.append(instance.pk)

    post_delete.connect(thread_deleted, sender=Thread, dispatch_uid="t_q_thread_deleted")
    try:
        assert "repaired and re-verified 1 of 1" in run("analyses_user", "--repair", "--execute")[1]
        assert "repaired and re-verified 1 of 1" in run("threads_user", "--repair", "--execute")[1]
    finally:
        post_delete.disconnect(sender=Thread, dispatch_uid="t_q_thread_deleted")
    assert list(Analysis.objects.values_list("pk", flat=True)) == [other.pk]
    assert list(AnalysisResult.objects.values_list("pk", flat=True)) == results[2:]
    assert sorted(RepairLog.objects.values_list("check_name", "result")) == [
        ("analyses_user", "deleted 3"),  # the analysis and its two results, as QuerySet.delete() counts
        ("threads_user", "deleted 1"),
    ]
    assert deleted == [thread.pk]
    assert not Thread.objects.exists()
