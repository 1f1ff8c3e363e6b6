"""Helpers for the migration tests: which app lives where, stepping the executor, restoring.

Every test here migrates real databases (PostgreSQL, or SQLite under
tests.settings_sqlite) and leaves both at their latest state afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.core.management import call_command
from django.db import connections, router
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader

from consistency.schema.compare import Difference, compare
from consistency.schema.expected import applied_state, expected_tables
from consistency.schema.live import live_tables

ALIASES = ("default", "auth")
Node = tuple[str, str]


def disk_loader() -> MigrationLoader:
    return MigrationLoader(None, ignore_no_migrations=True)


def app_homes() -> list[tuple[str, str]]:
    """(app label, alias) for every app with migrations, on the one alias the router gives it."""
    loader = disk_loader()
    return [
        (label, alias)
        for label in sorted(loader.migrated_apps)
        for alias in ALIASES
        if router.allow_migrate(alias, label)
    ]


def app_migrations(label: str) -> list[str]:
    """``label``'s migration names in the order they apply."""
    graph = disk_loader().graph
    ordered: list[str] = []
    for leaf in graph.leaf_nodes(label):
        for app, name in graph.forwards_plan(leaf):
            if app == label and name not in ordered:
                ordered.append(name)
    return ordered


def migrate(alias: str, label: str, name: str | None) -> None:
    """Move ``label`` on ``alias`` to migration ``name`` (None: zero), with what it depends on."""
    executor = MigrationExecutor(connections[alias])
    executor.migrate([(label, name)])


def unapply(alias: str, label: str, name: str) -> None:
    """Unapply exactly ``label.name`` (its dependents must be unapplied already)."""
    executor = MigrationExecutor(connections[alias])
    executor.migrate([], plan=[(executor.loader.graph.nodes[(label, name)], True)])


def applied(alias: str, label: str) -> set[str]:
    return {name for app, name in MigrationLoader(connections[alias]).applied_migrations if app == label}


def schema_differences(alias: str, label: str, app_tables: set[str]) -> list[Difference]:
    """How ``label``'s tables on ``alias`` depart from what its applied migrations imply.

    ``app_tables`` are every table the app has at any step: those not expected now must be gone.
    """
    expected = expected_tables(alias, applied_state(alias), [label])
    live = {table: shape for table, shape in live_tables(alias).items() if table in app_tables | set(expected)}
    return compare(expected, live)


def is_project_app(label: str) -> bool:
    """True for this project's own apps, False for Django's and third-party ones."""
    path = Path(apps.get_app_config(label).path).resolve()
    return path.is_relative_to(Path(settings.BASE_DIR).resolve()) and "site-packages" not in path.parts


def tables_over_history(alias: str, label: str) -> set[str]:
    """Every table ``label`` puts on ``alias`` at any of its migrations."""
    loader = disk_loader()
    tables: set[str] = set()
    for name in app_migrations(label):
        tables |= set(expected_tables(alias, loader.project_state((label, name), at_end=True), [label]))
    return tables


@pytest.fixture
def restore_latest() -> Iterator[None]:
    """Leave both databases at their latest migrations, whatever the test did."""
    yield
    for alias in ALIASES:
        call_command("migrate", database=alias, verbosity=0, skip_checks=True)
