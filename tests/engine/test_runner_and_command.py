"""Runs, drift records, repairs and the command's exit codes, on real databases."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from io import StringIO
from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from consistency.engine.declarations import Invariant, ReferenceParity, Repair, RowParity, Side
from consistency.engine.registry import registry
from consistency.models import AuditRun, CheckRun, Drift, RepairLog
from tests.commands import checkconsistency as run
from tests.engine.conftest import flush_stats, shape
from tests.testapp.models import Child, IntRow, Parent

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "auth"]), pytest.mark.sqlite]

ROWS = RowParity(
    name="t_rows",
    source=Side("testapp.IntRow", alias="auth"),
    target=Side("testapp.IntRow", alias="default"),
    key=("id",),
    fields=("name", "email", "active", "token_hash"),
    secret=("token_hash",),
    updated_at=("updated_at", "updated_at"),
    repair=Repair.SOURCE_WINS,
    tags=("testing",),
)
ORPHANS = ReferenceParity(
    name="t_children_parent",
    child=Side("testapp.Child", alias="default"),
    field="parent",
    parent=Side("testapp.Parent", alias="auth"),
    repair=Repair.DELETE_ORPHAN,
    tags=("testing",),
)


def _no_active(qs: Any) -> Any:
    return ({"key": r.pk, "detail": "inactive"} for r in qs.filter(active=False))


INACTIVE = Invariant(
    name="t_all_active",
    side=Side("testapp.IntRow", alias="default"),
    violations=_no_active,
    tags=("testing",),
)


@pytest.fixture
def declared(tables: None, clean_registry: None) -> None:
    registry.register(ROWS, ORPHANS, INACTIVE)


def fill(alias: str, ids: range | list[int], **overrides: Any) -> None:
    IntRow.objects.using(alias).bulk_create([IntRow(id=i, **shape(i, active=True, **overrides)) for i in ids])


def test_command__exit_0_when_everything_agrees(declared: None) -> None:
    fill("auth", range(1, 51))
    fill("default", range(1, 51))
    code, out = run("--tag", "testing")
    assert code == 0
    assert "Audit run" in out
    assert "OK" in out
    assert AuditRun.objects.get().status == "ok"


def test_command__exit_1_with_drift_and_json_report(declared: None) -> None:
    fill("auth", range(1, 51))
    fill("default", range(2, 51))
    IntRow.objects.using("default").filter(id=9).update(name="changed", token_hash="planted-secret")
    Parent.objects.using("auth").create(id="p1")
    Child.objects.using("default").bulk_create([Child(id=1, parent_id="p1"), Child(id=2, parent_id="gone")])
    code, out = run("--tag", "testing", "--format", "json")
    assert code == 1
    report = json.loads(out)
    assert report["run"]["status"] == "drift"
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == {"t_rows", "t_children_parent", "t_all_active"}
    rows = checks["t_rows"]
    assert (rows["status"], rows["drift_count"], rows["compared"]) == ("drift", 2, 50)
    assert {(d["kind"], d["key"], tuple(d["fields"])) for d in rows["drifts"]} == {
        ("missing", "1", ()),
        ("mismatch", "9", ("name", "token_hash")),
    }
    orphan = checks["t_children_parent"]["drifts"]
    assert [(d["kind"], d["key"]) for d in orphan] == [("orphan", "2")]
    assert checks["t_all_active"]["status"] == "ok"
    assert "planted-secret" not in out
    assert "secret-token-9" not in out
    stored = json.dumps(list(Drift.objects.values("source", "target", "detail")))
    assert "planted-secret" not in stored
    assert "secret-token-9" not in stored


def test_command__limit_caps_listed_drifts_but_not_the_count(declared: None) -> None:
    fill("auth", range(1, 31))
    code, out = run("t_rows", "--format", "json", "--limit", "5")
    check = json.loads(out)["checks"][0]
    assert (code, check["drift_count"], len(check["drifts"])) == (1, 30, 5)


def test_command__junit_and_output_file(declared: None, tmp_path: Any) -> None:
    fill("auth", range(1, 4))
    target = tmp_path / "report.xml"
    code, out = run("t_rows", "--format", "junit", "--output", str(target))
    body = target.read_text()
    assert code == 1
    assert out == ""
    assert '<testcase classname="consistency.row" name="t_rows"' in body
    assert '<failure message="3 drift">' in body


def test_command__fail_on_severity(declared: None) -> None:
    IntRow.objects.using("default").create(id=1, **shape(1, active=False))
    IntRow.objects.using("auth").create(id=1, **shape(1, active=False))
    assert run("t_all_active")[0] == 1
    assert run("t_all_active", "--fail-on", "critical")[0] == 0


def test_command__bad_input_exits_2_naming_the_problem(declared: None) -> None:
    with pytest.raises(CommandError, match="unknown check\\(s\\): nope") as exc:
        call_command("checkconsistency", "nope", stdout=StringIO())
    assert exc.value.returncode == 2
    with pytest.raises(CommandError, match="--since 'yesterday'") as exc:
        call_command("checkconsistency", "t_rows", "--since", "yesterday", stdout=StringIO())
    assert exc.value.returncode == 2
    with pytest.raises(CommandError, match="--execute goes with --repair") as exc:
        call_command("checkconsistency", "--execute", stdout=StringIO())
    assert exc.value.returncode == 2
    assert AuditRun.objects.count() == 0


def test_list__shows_kind_store_and_tags(declared: None) -> None:
    out = StringIO()
    call_command("checkconsistency", "--list", "--tag", "testing", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["check", "kind", "store", "severity", "tags"]
    assert {line.split()[0] for line in lines[1:]} == {"t_all_active", "t_children_parent", "t_rows"}


def test_runner__same_drift_is_the_same_record_and_resolves_when_gone(declared: None) -> None:
    fill("auth", range(1, 11))
    fill("default", range(1, 11))
    IntRow.objects.using("default").filter(id=4).update(name="drifted")
    run("t_rows")
    run("t_rows")
    drift = Drift.objects.get()
    assert (drift.kind, drift.key, drift.times_seen, drift.status) == ("mismatch", "4", 2, "open")
    first_run = drift.first_run_id
    assert drift.last_run_id != first_run
    IntRow.objects.using("default").filter(id=4).update(name="name 4")
    assert run("t_rows")[0] == 0
    drift.refresh_from_db()
    assert (drift.status, drift.times_seen) == ("resolved", 2)
    IntRow.objects.using("default").filter(id=4).update(name="drifted again")
    run("t_rows")
    drift.refresh_from_db()
    assert (drift.status, drift.times_seen, drift.first_run_id) == ("open", 3, first_run)
    assert (drift.target or {}).get("name") == "drifted again"  # seen with other values: shows the new ones
    assert Drift.objects.count() == 1


def test_runner__a_lapsed_mute_opens_again_and_a_running_one_holds(declared: None) -> None:
    fill("auth", range(1, 4))
    run("t_rows")
    now = timezone.now()
    Drift.objects.filter(key="1").update(status="muted", muted_until=now - dt.timedelta(minutes=1))
    Drift.objects.filter(key="2").update(status="muted", muted_until=now + dt.timedelta(hours=1))
    Drift.objects.filter(key="3").update(status="repaired", resolved_at=now)
    run("t_rows")
    statuses = dict(Drift.objects.values_list("key", "status"))
    assert statuses == {"1": "open", "2": "muted", "3": "open"}
    assert Drift.objects.get(key="3").resolved_at is None
    assert set(Drift.objects.values_list("times_seen", flat=True)) == {2}


def test_runner__check_run_keeps_the_strategy_and_figures(declared: None) -> None:
    fill("auth", range(1, 31))
    fill("default", range(1, 31))
    IntRow.objects.using("default").filter(id=12).update(name="drifted")
    code, out = run("t_rows", "--format", "json")
    reported = json.loads(out)["checks"][0]["figures"]
    check_run = CheckRun.objects.get(check_name="t_rows")
    assert code == 1
    assert check_run.strategy == reported["strategy"] != ""
    assert check_run.figures == reported
    assert check_run.figures["candidates"] == 1


def test_command__a_check_nothing_touched_since_its_last_run_is_proven_unchanged(
    declared: None, tmp_path: Any
) -> None:
    """The command's own path: a clean full run leaves each side's summary; the next run, with
    nothing written since, proves both sides unchanged and hashes no row; a write after that is
    found, its side aggregated, the other still proven."""
    if connections["default"].vendor != "postgresql":
        pytest.skip("the proof reads PostgreSQL's xmin")
    fill("auth", range(1, 31))
    fill("default", range(1, 31))
    flush_stats()

    def figures() -> tuple[int, dict[str, Any]]:
        code, out = run("t_rows", "--format", "json")
        (check,) = json.loads(out)["checks"]
        return code, {**check["figures"], "compared": check["compared"]}

    with override_settings(CONSISTENCY={"RANGE_CACHE_DIR": str(tmp_path), "SETTLE_SECONDS": 0}):
        first_code, first = figures()
        second_code, second = figures()
        IntRow.objects.using("default").filter(id=12).update(name="drifted")
        flush_stats()
        third_code, third = figures()

    assert (first_code, first["strategy"], first.get("proven_sides")) == (0, "aggregate", None)
    assert (second_code, second["strategy"], second["proven_sides"], second["compared"]) == (
        0,
        "unchanged",
        2,
        30,
    )
    assert (third_code, third["strategy"], third["proven_sides"]) == (1, "aggregate+stream", 1)
    assert CheckRun.objects.order_by("-id").values_list("strategy", flat=True)[1] == "unchanged"


def test_runner__acknowledged_drift_stays_acknowledged(declared: None) -> None:
    fill("auth", range(1, 3))
    run("t_rows")
    Drift.objects.update(status="acknowledged")
    run("t_rows")
    assert set(Drift.objects.values_list("status", flat=True)) == {"acknowledged"}


def test_repair__dry_run_changes_nothing_and_execute_is_idempotent(declared: None) -> None:
    fill("auth", range(1, 21))
    fill("default", range(2, 21))
    fill("default", [99])
    IntRow.objects.using("default").filter(id=5).update(name="wrong")
    code, out = run("t_rows", "--repair")
    assert code == 1
    assert "Plan (dry run, nothing changed): t_rows, 3 action(s)" in out
    assert "insert t_int_rows@default key=1" in out
    assert "delete t_int_rows@default key=99" in out
    assert IntRow.objects.using("default").filter(id=1).exists() is False
    assert RepairLog.objects.count() == 0

    code, out = run("t_rows", "--repair", "--execute")
    assert "repaired and re-verified 3 of 3" in out
    assert IntRow.objects.using("default").get(id=1).name == "name 1"
    assert IntRow.objects.using("default").get(id=5).name == "name 5"
    assert not IntRow.objects.using("default").filter(id=99).exists()
    assert set(Drift.objects.values_list("status", flat=True)) == {"repaired"}
    assert RepairLog.objects.filter(executed=True, verified=True).count() == 3
    assert "secret-token" not in json.dumps(list(RepairLog.objects.values("plan")))

    code, out = run("t_rows", "--repair", "--execute")
    assert code == 0
    assert RepairLog.objects.count() == 3  # nothing left to repair: nothing applied twice


def test_repair__orphans_are_deleted(declared: None) -> None:
    Child.objects.using("default").bulk_create([Child(id=1, parent_id="gone"), Child(id=2, parent_id=None)])
    run("t_children_parent", "--repair", "--execute")
    assert list(Child.objects.using("default").values_list("id", flat=True)) == [2]


def test_incremental__since_last_uses_the_previous_watermark(declared: None) -> None:
    fill("auth", range(1, 11))
    fill("default", range(1, 11))
    assert run("t_rows")[0] == 0
    watermark = CheckRun.objects.get().watermark
    IntRow.objects.using("default").filter(id=3).update(name="late", updated_at=watermark)
    code, out = run("t_rows", "--since", "last", "--format", "json")
    check = json.loads(out)["checks"][0]
    assert (code, check["figures"]["mode"], check["compared"]) == (1, "incremental", 1)
    assert [d["key"] for d in check["drifts"]] == ["3"]


def test_store_failure_mid_audit__run_fails_with_exit_2_and_records_are_kept(declared: None) -> None:
    if connections["default"].vendor != "postgresql":
        pytest.skip("terminating a server connection needs PostgreSQL")
    fill("auth", range(1, 11))
    fill("default", range(1, 10))
    run("t_rows")
    before = list(Drift.objects.values_list("kind", "key", "status", "times_seen"))
    IntRow.objects.using("auth").bulk_create(
        [IntRow(id=i, **shape(i)) for i in range(100, 200_000)], batch_size=20_000
    )
    stop = threading.Event()

    auth_db = connections["auth"].settings_dict["NAME"]

    def kill_scans() -> None:
        # Terminate the audit's scans of this test's auth database while they run
        # (never another database's sessions: other suites may share the server).
        with connections["default"].cursor() as cursor:
            while not stop.is_set():
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid() AND state = 'active' "
                    "AND (query LIKE 'SELECT string_agg(int8send(%%' OR query LIKE 'COPY (SELECT%%')",
                    [auth_db],
                )
                time.sleep(0.01)
        connections["default"].close()

    killer = threading.Thread(target=kill_scans)
    killer.start()
    try:
        code, _out = run("t_rows")
    finally:
        stop.set()
        killer.join()
    assert code == 2
    assert AuditRun.objects.latest().status == "error"
    failed = CheckRun.objects.filter(status="error").get()
    assert failed.check_name == "t_rows"
    assert failed.error
    assert list(Drift.objects.values_list("kind", "key", "status", "times_seen")) == before


def test_unreachable_database__exit_2(declared: None, settings: Any) -> None:
    connections["auth"].close()
    original = connections["auth"].settings_dict.copy()
    connections["auth"].settings_dict.update({"HOST": "127.0.0.1", "PORT": "1", "NAME": "x"})
    if original["ENGINE"].endswith("sqlite3"):
        connections["auth"].settings_dict["NAME"] = "/nonexistent-dir/x.sqlite3"
    try:
        code, _ = run("t_rows")
    finally:
        connections["auth"].close()
        connections["auth"].settings_dict.update(original)
    assert code == 2
    run_record = AuditRun.objects.latest()
    assert run_record.status == "error"
    assert "t_rows" in run_record.error


def test_system_check__invalid_declarations_are_errors(clean_registry: None) -> None:
    registry.register(
        RowParity(
            name="bad_model", source=Side("testapp.Nope"), target=Side("testapp.IntRow"), fields=("name",)
        ),
        RowParity(
            name="bad_field",
            source=Side("testapp.IntRow"),
            target=Side("testapp.StrRow"),
            fields=("name", "missing_field"),
        ),
        RowParity(
            name="bad_alias",
            source=Side("testapp.IntRow", alias="nowhere"),
            target=Side("testapp.IntRow"),
            fields=("name",),
        ),
        RowParity(
            name="bad_key",
            source=Side("testapp.IntRow"),
            target=Side("testapp.StrRow"),
            key=("name",),
            fields=("email",),
        ),
    )
    errors = {e.obj: e for e in run_checks() if e.id == "consistency.E001"}
    assert set(errors) == {"bad_model", "bad_field", "bad_alias", "bad_key"}
    assert "unknown model 'testapp.Nope'" in errors["bad_model"].msg
    assert "has no field 'missing_field'" in errors["bad_field"].msg
    assert "unknown database alias 'nowhere'" in errors["bad_alias"].msg
    assert "key 'name' of testapp.IntRow is not unique" in errors["bad_key"].msg


def test_system_check__shipped_declarations_are_valid() -> None:
    assert [e for e in run_checks() if e.id == "consistency.E001"] == []


@override_settings(CONSISTENCY={"RANGE_CACHE_DIR": None, "SETTLE_SECONDS": 0})
def test_runner__first_pass_follows_the_previous_run(declared: None) -> None:
    """Aggregate first after a full run without drift; stream directly after a full run that found
    drift. Incremental runs do not count. (The range cache is off: with it, later runs read
    per-range digests instead, see test_rowdiff.)"""
    pg = all(connections[a].vendor == "postgresql" for a in ("auth", "default"))

    def strategy() -> tuple[int, str, list[str]]:
        code, out = run("t_rows", "--format", "json")
        check = json.loads(out)["checks"][0]
        return code, check["figures"]["strategy"], sorted(d["key"] for d in check["drifts"])

    fill("auth", range(1, 31))
    fill("default", range(1, 31))
    # Never run: aggregate first, and the aggregates agree.
    assert strategy() == (0, "aggregate" if pg else "stream", [])
    IntRow.objects.using("default").filter(id=12).update(name="drifted")
    # The last run found nothing: aggregate first; they disagree, so it streams too.
    assert strategy() == (1, "aggregate+stream" if pg else "stream", ["12"])
    # The last run found drift: straight to the stream.
    assert strategy() == (1, "stream", ["12"])
    IntRow.objects.using("default").filter(id=12).update(name="name 12")
    assert strategy() == (0, "stream", [])  # the drift was open when this run chose
    assert strategy() == (0, "aggregate" if pg else "stream", [])
    # Drift left open (acknowledged) by an earlier run, even with an ok run in between: stream.
    IntRow.objects.using("default").filter(id=5).update(name="drifted")
    assert strategy()[0] == 1
    Drift.objects.filter(key="5").update(status="acknowledged")
    CheckRun.objects.filter(check_name="t_rows").update(status="ok")
    assert strategy() == (1, "stream", ["5"])
    # Only full runs count: after a full run that found drift (repaired since), a clean
    # incremental run does not make the next full run start with the aggregate.
    IntRow.objects.using("default").filter(id=5).update(name="name 5")
    Drift.objects.filter(key="5").update(status="repaired")
    code, out = run("t_rows", "--format", "json", "--since", "2000-01-01T00:00:00Z")
    assert (code, json.loads(out)["checks"][0]["figures"]["mode"]) == (0, "incremental")
    assert strategy() == (0, "stream", [])
    assert strategy() == (0, "aggregate" if pg else "stream", [])


def test_repair__applied_but_not_recorded_says_so_and_the_next_audit_resolves_it(declared: None) -> None:
    if connections["default"].vendor != "postgresql":
        pytest.skip("a trigger that refuses the repair log's insert needs PostgreSQL")
    fill("auth", range(1, 11))
    fill("default", range(2, 11))
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION t_refuse_log() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'repair log refused by the test'; END $$"
        )
        cursor.execute(
            f"CREATE TRIGGER t_refuse_log BEFORE INSERT ON {RepairLog._meta.db_table} "
            "FOR EACH ROW EXECUTE FUNCTION t_refuse_log()"
        )
    try:
        with pytest.raises(CommandError) as failed:
            call_command(
                "checkconsistency", "t_rows", "--repair", "--execute", "--settle", "0",
                stdout=StringIO(), stderr=StringIO(),
            )  # fmt: skip
    finally:
        with connections["default"].cursor() as cursor:
            cursor.execute(f"DROP TRIGGER t_refuse_log ON {RepairLog._meta.db_table}")
            cursor.execute("DROP FUNCTION t_refuse_log()")
    assert failed.value.returncode == 2
    message = str(failed.value)
    assert "was applied, but recording it failed" in message, message
    assert "rolled back" not in message
    assert IntRow.objects.using("default").get(id=1).name == "name 1"  # the apply committed
    assert Drift.objects.get(key="1").status == "open"  # ... and the record did not
    assert RepairLog.objects.count() == 0

    code, out = run("t_rows", "--repair", "--execute")
    assert code == 0, out  # the rerun's audit sees the repaired key agree: nothing to apply
    assert Drift.objects.get(key="1").status == "resolved"
    assert RepairLog.objects.count() == 0
