"""Bad input gets a clear error or a finding, never a crash or a silent skip:
options, environment values, hostile identifiers, cache values, long strings, odd JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from django.core.cache import caches
from django.db import connections, models

from consistency.auth_service.models import AuthUser
from consistency.backend.models import Thread, User
from consistency.engine.declarations import ReferenceParity, Repair, RowParity, Side
from consistency.engine.registry import registry
from consistency.models import AuditRun, Drift
from tests.reliability.conftest import command, reliability_db
from tests.test_settings_env import GOOD, start

ROOT = Path(__file__).resolve().parents[2]
# Everything but a double quote, which Django's own quote_name cannot escape (see the test
# of that case below): quotes, semicolons, comments, blanks, upper case, non-ASCII.
HOSTILE = "x'; DROP TABLE t_canary; -- Ä"


class HostileRow(models.Model):
    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=200, null=True, db_column=f"na'me{HOSTILE}")
    updated_at = models.DateTimeField(null=True, db_column="Up'dated; --")
    objects: ClassVar[models.Manager[HostileRow]] = models.Manager()

    class Meta:
        app_label = "testapp"
        managed = False
        db_table = f"t_hostile{HOSTILE}"


class HostileChild(models.Model):
    id = models.BigIntegerField(primary_key=True)
    parent = models.ForeignKey(
        HostileRow, on_delete=models.DO_NOTHING, db_constraint=False, null=True, db_column=f"pa'rent{HOSTILE}"
    )
    objects: ClassVar[models.Manager[HostileChild]] = models.Manager()

    class Meta:
        app_label = "testapp"
        managed = False
        db_table = f"t_child'; DELETE FROM t_canary; --{HOSTILE}"


HOSTILE_MODELS = (HostileRow, HostileChild)


# -- the command line ----------------------------------------------------------


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", **env}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--format", "xml"], r"argument --format: invalid choice: 'xml'"),
        (["--limit", "many"], r"argument --limit: invalid int value: 'many'"),
        (["--fail-on", "loud"], r"argument --fail-on: invalid choice: 'loud'"),
        (["--settle", "soon"], r"argument --settle: invalid float value: 'soon'"),
        (["--since", "2026-01-01", "--full"], r"argument --full: not allowed with argument --since"),
        (["--bogus"], r"unrecognized arguments: --bogus"),
    ],
)
def test_command_line__bad_option_exits_2_naming_it(args: list[str], pattern: str) -> None:
    result = manage("checkconsistency", *args)
    assert result.returncode == 2, result.stdout
    assert re.search(pattern, result.stderr), result.stderr
    assert "Traceback" not in result.stderr


@reliability_db
@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["no_such_check"], r"unknown check\(s\): no_such_check\. Known checks: .*users"),
        (["users", "users; DROP TABLE users"], r"unknown check\(s\): users; DROP TABLE users"),
        (["--tag", "no-such-tag"], r"no check matches tags \['no-such-tag'\]"),
        (["users", "--settle", "-1"], r"--settle must be a finite number of seconds, zero or more"),
        (["users", "--settle", "nan"], r"--settle must be a finite number of seconds"),
        (["users", "--settle", "inf"], r"--settle must be a finite number of seconds"),
        (["users", "--limit", "-1"], r"--limit"),
        (
            ["users", "--since", "tomorrow-ish"],
            r"--since 'tomorrow-ish': expected 'last' or an ISO-8601 time",
        ),
        (["users", "--execute"], r"--execute goes with --repair"),
        (["users", "--output", "/nonexistent/dir/report.txt"], r"--output /nonexistent/dir/report.txt: "),
    ],
)
def test_command__bad_value_exits_2_naming_it(args: list[str], pattern: str) -> None:
    code, _, message = command(*args)
    assert code == 2, message
    assert re.search(pattern, message), message


@reliability_db
def test_command__an_unusable_consistency_setting_exits_2_naming_it_and_records_nothing(
    settings: Any,
) -> None:
    """The command skips Django's system checks, so it checks its settings itself (consistency.E004)."""
    settings.CONSISTENCY = {**settings.CONSISTENCY, "SETTLE_SECONDS": float("inf"), "SETLE_SECONDS": 1}
    before = AuditRun.objects.count()
    code, out, message = command("users")
    assert code == 2, message
    assert "CONSISTENCY['SETTLE_SECONDS'] is inf: expected a finite number of seconds >= 0" in message
    assert (
        "CONSISTENCY['SETLE_SECONDS'] is not a setting of this app (did you mean 'SETTLE_SECONDS'?)"
        in message
    )
    assert (out, AuditRun.objects.count()) == ("", before)


@reliability_db
def test_audit__a_setting_read_mid_run_fails_the_check_naming_it(settings: Any) -> None:
    """Outside the command (a Celery task, the admin) nothing checks the settings first: the
    value is checked when read, and the run ends failed, never running or clean."""
    from consistency.engine.runner import AuditOptions, run_audit

    run_audit([registry.get("users")], AuditOptions(settle=0))  # a watermark for --since last
    settings.CONSISTENCY = {**settings.CONSISTENCY, "INCREMENTAL_MARGIN_SECONDS": -60}
    run, results = run_audit([registry.get("users")], AuditOptions(settle=0, since="last"))
    assert (run.status, results[0].status) == ("error", "error")
    assert (
        "CONSISTENCY['INCREMENTAL_MARGIN_SECONDS'] is -60: expected a finite number of seconds >= 0"
        in run.error
    )


@pytest.mark.parametrize("service", ["worker", "beat"])
def test_celery__a_misspelt_consistency_key_stops_the_worker_and_beat_naming_it(
    service: str, tmp_path: Path
) -> None:
    """Celery runs no Django system check; the worker and beat check consistency.E004 at start."""
    (tmp_path / "misspelt_settings.py").write_text(
        "from tests.sync.worker_settings import *  # noqa: F403\n"
        'CONSISTENCY = {**CONSISTENCY, "SETLE_SECONDS": 1}  # noqa: F405\n'
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "DJANGO_SETTINGS_MODULE": "misspelt_settings",
    }
    command = [sys.executable, "-m", "celery", "-A", "project", service, "--loglevel", "INFO"]
    if service == "worker":
        command += ["--pool", "solo", "-n", f"misspelt-{os.getpid()}@localhost", "--without-mingle"]
    else:
        # The file scheduler: the database one would want the test database before beat_init.
        command += ["--scheduler", "celery.beat:PersistentScheduler", "--schedule", str(tmp_path / "s")]
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"celery {service} kept running with a misspelt setting: {exc.stderr!r}")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert (
        "CONSISTENCY['SETLE_SECONDS'] is not a setting of this app (did you mean 'SETTLE_SECONDS'?)" in output
    )


# -- the environment -----------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_CONNECT_TIMEOUT", "soon"),
        ("DATABASE_CONNECT_TIMEOUT", "0"),
        ("DATABASE_STATEMENT_TIMEOUT", "-5"),
        ("DATABASE_STATEMENT_TIMEOUT", "nan"),
        ("DATABASE_POOL_MAX_SIZE", "lots"),
        ("DATABASE_POOL_TIMEOUT", "inf"),
        ("REDIS_TIMEOUT", "0"),
        ("REDIS_CONNECT_TIMEOUT", "5s"),
        ("DATABASE_KEEPALIVES_IDLE", "0"),
        ("DATABASE_KEEPALIVES_INTERVAL", "1.5"),
        ("DATABASE_KEEPALIVES_COUNT", "many"),
        ("DATABASE_TCP_USER_TIMEOUT", "-1"),
    ],
)
def test_environment__bad_timeout_stops_startup_naming_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    result = start(tmp_path, **{**GOOD, variable: value})
    assert result.returncode != 0, result.stdout
    assert re.search(
        rf"ImproperlyConfigured: {variable}='{re.escape(value)}' is not usable", result.stderr
    ), result.stderr


def test_environment__timeouts_and_pool_reach_the_settings(tmp_path: Path) -> None:
    code = (
        "import json, django; from django.conf import settings; django.setup();"
        "print(json.dumps([settings.DATABASES['auth']['OPTIONS'], settings.CACHES['default']['OPTIONS']]))"
    )
    env = {
        **GOOD,
        "DATABASE_CONNECT_TIMEOUT": "2",
        "DATABASE_STATEMENT_TIMEOUT": "1.5",
        "DATABASE_POOL_MAX_SIZE": "7",
        "DATABASE_POOL_TIMEOUT": "3",
        "REDIS_TIMEOUT": "4",
        "DATABASE_KEEPALIVES_IDLE": "20",
        "DATABASE_KEEPALIVES_INTERVAL": "5",
        "DATABASE_KEEPALIVES_COUNT": "4",
        "DATABASE_TCP_USER_TIMEOUT": "2.5",
    }
    result = start(tmp_path, code, **env)
    assert result.returncode == 0, result.stderr
    database, cache = json.loads(result.stdout.strip().splitlines()[-1])
    assert database["connect_timeout"] == 2
    assert database["options"] == "-c statement_timeout=1500"
    assert database["pool"] == {"min_size": 1, "max_size": 7, "timeout": 3}
    assert {k: database[k] for k in database if k.startswith(("keepalives", "tcp_"))} == {
        "keepalives": 1,
        "keepalives_idle": 20,
        "keepalives_interval": 5,
        "keepalives_count": 4,
        "tcp_user_timeout": 2500,
    }
    assert cache["SOCKET_TIMEOUT"] == 4


# -- hostile identifiers -------------------------------------------------------


@pytest.fixture
def hostile_tables(transactional_db: None) -> Iterator[None]:
    """The hostile tables on both aliases, and a canary table a successful injection would drop."""
    for alias in ("auth", "default"):
        with connections[alias].cursor() as cursor:
            cursor.execute("CREATE TABLE IF NOT EXISTS t_canary (id int)")
            cursor.execute("INSERT INTO t_canary VALUES (1)")
        with connections[alias].schema_editor() as editor:
            for model in HOSTILE_MODELS:
                editor.create_model(model)
    yield
    for alias in ("auth", "default"):
        connections[alias].close()
        with connections[alias].schema_editor() as editor:
            for model in HOSTILE_MODELS:
                editor.delete_model(model)
        with connections[alias].cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS t_canary")


def canaries() -> list[int]:
    out = []
    for alias in ("auth", "default"):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM t_canary")
            out.append(cursor.fetchone()[0])
    return out


@reliability_db
def test_hostile_identifiers__quoted_everywhere_findings_exact_and_repair_works(
    hostile_tables: None, clean_registry: None
) -> None:
    registry.register(
        RowParity(
            name="t_hostile_rows",
            source=Side("testapp.HostileRow", alias="auth"),
            target=Side("testapp.HostileRow", alias="default"),
            key=("id",),
            fields=("name",),
            updated_at=("updated_at", "updated_at"),
            repair=Repair.SOURCE_WINS,
        ),
        ReferenceParity(
            name="t_hostile_children",
            child=Side("testapp.HostileChild", alias="default"),
            field="parent",
            parent=Side("testapp.HostileRow", alias="default"),
            repair=Repair.DELETE_ORPHAN,
        ),
        ReferenceParity(
            name="t_hostile_children_across",
            child=Side("testapp.HostileChild", alias="default"),
            field="parent",
            parent=Side("testapp.HostileRow", alias="auth"),
        ),
    )
    names = {i: f'it\'s "{i}"; DROP TABLE t_canary; --' for i in range(1, 21)}
    HostileRow.objects.using("auth").bulk_create([HostileRow(id=i, name=n) for i, n in names.items()])
    HostileRow.objects.using("default").bulk_create(
        [HostileRow(id=i, name=n) for i, n in names.items() if i != 3]
    )
    HostileRow.objects.using("default").filter(id=5).update(name="'; DELETE FROM t_canary; --")
    HostileChild.objects.using("default").bulk_create(
        [HostileChild(id=1, parent_id=1), HostileChild(id=2, parent_id=999)]
    )

    code, out, message = command(
        "t_hostile_rows", "t_hostile_children", "t_hostile_children_across", "--format", "json"
    )
    assert code == 1, message
    found = {c["name"]: sorted((d["kind"], d["key"]) for d in c["drifts"]) for c in json.loads(out)["checks"]}
    assert found == {
        "t_hostile_rows": [("mismatch", "5"), ("missing", "3")],
        "t_hostile_children": [("orphan", "2")],
        "t_hostile_children_across": [("orphan", "2")],
    }
    assert canaries() == [1, 1]

    code, out, message = command("t_hostile_rows", "t_hostile_children", "--repair", "--execute")
    assert "repaired and re-verified 2 of 2" in out, message
    assert "repaired and re-verified 1 of 1" in out, message
    assert command("t_hostile_rows", "t_hostile_children")[0] == 0
    assert HostileRow.objects.using("default").get(id=5).name == names[5]
    assert canaries() == [1, 1]


# -- cache values, long strings, odd JSON --------------------------------------


@reliability_db
def test_cache__values_not_json_not_utf8_or_huge_are_findings(seeded: int) -> None:
    cache: Any = caches["default"]  # django-redis
    raw = cache.client.get_client(write=True)
    ids = [str(pk) for pk in AuthUser.objects.order_by("pk").values_list("pk", flat=True)[:5]]
    planted = {
        ids[0]: b"{not json",
        ids[1]: b"\xff\xfe\x00 not utf-8",
        ids[2]: b"[1, 2, 3]",
        ids[3]: json.dumps({"id": ids[3], "full_name": "x" * 8_000_000}).encode(),  # 8 MB
        ids[4]: b'"just a string"',
    }
    for pk, value in planted.items():
        raw.set(cache.make_key(f"auth:user:{pk}"), value, ex=600)

    code, out, message = command("cache_auth_users", "--format", "json")
    assert code == 1, message
    check = json.loads(out)["checks"][0]
    assert check["status"] == "drift"
    assert {d["key"] for d in check["drifts"]} == {f"auth:user:{pk}" for pk in planted}
    assert len(out) < 100_000  # the 8 MB value is not copied into the report
    assert Drift.objects.filter(check_name="cache_auth_users").count() == 5


@reliability_db
def test_rows__very_long_and_unusual_strings_compare_exactly(seeded: int) -> None:
    # As long as the columns allow (varchar 255), with characters that trip naive code:
    # combining marks, a zero-width space, an emoji, a right-to-left override, quotes.
    long_name = ("a\u0308" * 120 + "\u200b\U0001f600\u202e'\"\\")[:255]
    users = list(AuthUser.objects.order_by("pk")[:3])
    # Same odd value on both sides: no drift. A one-character difference at the end: drift.
    for user in users:
        AuthUser.objects.filter(pk=user.pk).update(full_name=long_name)
        User.objects.filter(pk=user.pk).update(full_name=long_name)
    User.objects.filter(pk=users[2].pk).update(full_name=long_name[:-1] + "x")
    code, out, message = command("users", "--format", "json")
    assert code == 1, message
    drifts = json.loads(out)["checks"][0]["drifts"]
    assert [(d["kind"], d["key"], d["fields"]) for d in drifts] == [
        ("mismatch", str(users[2].pk), ["full_name"])
    ]
    code, text, _ = command("users")
    assert code == 1
    assert max(len(line) for line in text.splitlines()) < 300  # the text report shortens values


@reliability_db
def test_json_columns__odd_shapes_are_findings_never_a_crash(seeded: int) -> None:
    threads = list(Thread.objects.order_by("pk")[:5])
    odd = ["not an object", [1, 2], {"user_id": {"nested": True}}, {"user_id": 12345}, {"user_id": None}]
    for thread, metadata in zip(threads, odd, strict=True):
        Thread.objects.filter(pk=thread.pk).update(metadata=metadata)
    code, out, message = command("threads_metadata_user", "--format", "json")
    assert code in (0, 1), message
    check = json.loads(out)["checks"][0]
    assert check["status"] in ("ok", "drift")
    keys = {d["key"] for d in check["drifts"]}
    # A metadata user that is not this thread's user is reported, whatever its JSON type.
    assert {str(threads[2].pk), str(threads[3].pk)} <= keys


class QuoteRow(models.Model):
    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=200, null=True)

    class Meta:
        app_label = "testapp"
        managed = False
        db_table = 't_quote"; DROP TABLE t_canary; --'


@reliability_db
def test_hostile_identifiers__a_double_quote_never_reaches_sql_unescaped(
    hostile_tables: None, clean_registry: None
) -> None:
    """Django's quote_name does not double an embedded quote, so a declaration over such a name
    must be refused, or quoted by the engine itself; the canary table must survive either way."""
    for alias in ("auth", "default"):
        with connections[alias].cursor() as cursor:
            # The name the injection would select from, so its first statement succeeds.
            cursor.execute("CREATE TABLE t_quote (id bigint PRIMARY KEY, name text)")
            cursor.execute("INSERT INTO t_quote VALUES (1, 'a')")
    try:
        registry.register(
            RowParity(
                name="t_quote_rows",
                source=Side("testapp.QuoteRow", alias="auth"),
                target=Side("testapp.QuoteRow", alias="default"),
                key=("id",),
                fields=("name",),
            )
        )
        code, _, message = command("t_quote_rows")
        assert canaries() == [1, 1]
        assert code == 2, message
        assert "t_quote" in message
    finally:
        for alias in ("auth", "default"):
            with connections[alias].cursor() as cursor:
                cursor.execute("DROP TABLE IF EXISTS t_quote")
