"""Each app's migrations take effect on its own database and on no other.

Django records every migration in each database's ``django_migrations`` (the
router turns the operations into no-ops elsewhere), so "none on the other
database" is checked where it matters: no SQL is run there and no table made.
"""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connections
from django.db.migrations.loader import MigrationLoader

pytestmark = [pytest.mark.migration_test, pytest.mark.django_db(databases=["default", "auth"])]


def _applied(alias: str, app_label: str) -> set[str]:
    loader = MigrationLoader(connections[alias])
    return {name for label, name in loader.applied_migrations if label == app_label}


def _on_disk(app_label: str) -> set[str]:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    return {name for label, name in loader.disk_migrations if label == app_label}


def _statements(app_label: str, name: str, alias: str) -> list[str]:
    """The SQL ``name`` runs on ``alias``, without comments and transaction lines."""
    out = StringIO()
    call_command("sqlmigrate", app_label, name, database=alias, stdout=out)
    skip = ("--", "BEGIN;", "COMMIT;")
    return [line for line in out.getvalue().splitlines() if line.strip() and not line.startswith(skip)]


@pytest.mark.parametrize(
    ("app_label", "home", "other"), [("auth_service", "auth", "default"), ("backend", "default", "auth")]
)
def test_migrations__applied_on_home_and_no_op_elsewhere(app_label: str, home: str, other: str) -> None:
    names = _on_disk(app_label)
    assert names, f"{app_label} has no migrations on disk"
    assert _applied(home, app_label) == names
    for name in sorted(names):
        assert _statements(app_label, name, other) == [], f"{app_label}.{name} runs SQL on {other}"
    first = sorted(names)[0]
    assert any(s.startswith("CREATE TABLE") for s in _statements(app_label, first, home))


def test_showmigrations__auth_database_lists_auth_service_applied() -> None:
    out = StringIO()
    call_command("showmigrations", "auth_service", database="auth", stdout=out)
    lines = [line.strip() for line in out.getvalue().splitlines()[1:] if line.strip()]
    assert lines, out.getvalue()
    assert all(line.startswith("[X]") for line in lines), out.getvalue()


def test_makemigrations__nothing_missing() -> None:
    out = StringIO()
    # --check exits non-zero (SystemExit) when a model change lacks a migration.
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()
