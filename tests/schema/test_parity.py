"""Schema drift made by hand is reported by `checkconsistency --tag schema` and by consistency.W008."""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from consistency import checks
from consistency.schema.parity import schema_differences

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "auth"])


def _sql(alias: str, *statements: str) -> None:
    with connections[alias].cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def _audit() -> tuple[int, dict[str, Any]]:
    out = StringIO()
    try:
        call_command("checkconsistency", "--tag", "schema", "--format", "json", "--settle", "0", stdout=out)
        code = 0
    except CommandError as exc:
        code = exc.returncode
    report = json.loads(out.getvalue())
    return code, {c["name"]: c for c in report["checks"]}


def _updated_at_index() -> str:
    with connections["default"].cursor() as cursor:
        found = connections["default"].introspection.get_constraints(cursor, "users")
    return next(name for name, info in found.items() if info["columns"] == ["updated_at"] and info["index"])


@pytest.fixture
def drifted() -> Iterator[str]:
    """Users lose a column and an index, gain a column and an index, change a type; a stray table appears."""
    index = _updated_at_index()
    _sql(
        "default",
        "ALTER TABLE users DROP COLUMN email_before_lowercase",
        "ALTER TABLE users ADD COLUMN nickname text NULL",
        "ALTER TABLE users ALTER COLUMN role TYPE text",
        f'DROP INDEX "{index}"',
        "CREATE TABLE stray_by_hand (id integer)",
        "CREATE INDEX users_full_name_by_hand ON users (full_name)",
    )
    yield index
    _sql(
        "default",
        "DROP INDEX users_full_name_by_hand",
        "DROP TABLE stray_by_hand",
        f'CREATE INDEX "{index}" ON users (updated_at)',
        "ALTER TABLE users ALTER COLUMN role TYPE varchar(32)",
        "ALTER TABLE users DROP COLUMN nickname",
        "ALTER TABLE users ADD COLUMN email_before_lowercase varchar(255) NULL",
    )


def test_schema_parity__quiet_when_the_schema_matches_the_migrations() -> None:
    assert schema_differences("default")[0] == []
    assert schema_differences("auth")[0] == []
    code, checks_run = _audit()
    assert code == 0
    assert {name: c["status"] for name, c in checks_run.items()} == {
        "schema_auth": "ok",
        "schema_default": "ok",
    }
    assert checks_run["schema_default"]["compared"] > 10
    assert checks.check_schema_drift(databases=["default", "auth"]) == []


def test_schema_parity__reports_each_hand_made_change(drifted: str) -> None:
    code, checks_run = _audit()
    assert code == 1
    assert checks_run["schema_auth"]["status"] == "ok"
    drifts = {(d["kind"], d["key"]): d["source"]["problem"] for d in checks_run["schema_default"]["drifts"]}
    assert drifts == {
        ("invariant", "users.email_before_lowercase"): "missing_column",
        ("invariant", "users.nickname"): "extra_column",
        ("invariant", "users.role"): "type_changed",
        ("invariant", "users(updated_at)"): "missing_key",
        ("invariant", "stray_by_hand"): "extra_table",
        ("invariant", "users(full_name)"): "extra_index",
    }
    details = {d["key"]: d["detail"] for d in checks_run["schema_default"]["drifts"]}
    assert details["users.role"] == "column users.role is text, migrations say character varying(32)"


def test_w008__fires_on_drift_naming_the_database(drifted: str) -> None:
    assert checks.check_schema_drift(databases=None) == []
    found = checks.check_schema_drift(databases=["default", "auth"])
    assert [m.id for m in found] == ["consistency.W008"]
    assert "database 'default' departs from its migrations in 6 place(s)" in found[0].msg
    assert "checkconsistency --tag schema" in str(found[0].hint)
