"""Every app's migrations go to zero and back, and step forward and backward one at a time.

After each step the app's tables, columns, types, keys and named constraints are
what its migrations up to that step imply (nothing left behind, nothing missing),
and each backward step leaves the database exactly as the forward step found it.
"""

from __future__ import annotations

import pytest

from consistency.schema.compare import compare
from consistency.schema.expected import applied_state, expected_tables
from consistency.schema.live import live_tables
from tests.migrations.conftest import (
    app_homes,
    app_migrations,
    applied,
    disk_loader,
    migrate,
    schema_differences,
    tables_over_history,
    unapply,
)

pytestmark = [
    pytest.mark.migration_test,
    pytest.mark.sqlite,
    pytest.mark.django_db(transaction=True, databases=["default", "auth"]),
    pytest.mark.usefixtures("restore_latest"),
]

HOMES = app_homes()


def test_app_homes__cover_the_project_apps_on_their_aliases() -> None:
    assert {("auth_service", "auth"), ("backend", "default"), ("consistency", "default")} <= set(HOMES)
    assert all(alias == "default" for label, alias in HOMES if label != "auth_service")


@pytest.mark.parametrize(("label", "alias"), HOMES, ids=[label for label, _ in HOMES])
def test_migrations__to_zero_and_back_to_latest(label: str, alias: str) -> None:
    names = app_migrations(label)
    history = tables_over_history(alias, label)
    migrate(alias, label, None)
    assert applied(alias, label) == set()
    assert schema_differences(alias, label, history) == []
    assert live_tables(alias).keys() & history == set()
    for leaf in disk_loader().graph.leaf_nodes():
        migrate(alias, *leaf)
    assert applied(alias, label) == set(names)
    assert compare(expected_tables(alias, applied_state(alias)), live_tables(alias)) == []


@pytest.mark.parametrize(("label", "alias"), HOMES, ids=[label for label, _ in HOMES])
def test_migrations__step_forward_then_backward_one_at_a_time(label: str, alias: str) -> None:
    names = app_migrations(label)
    history = tables_over_history(alias, label)
    migrate(alias, label, None)
    snapshots = [live_tables(alias)]
    for step, name in enumerate(names, start=1):
        migrate(alias, label, name)
        assert applied(alias, label) == set(names[:step])
        assert schema_differences(alias, label, history) == [], f"after {label}.{name} forwards"
        snapshots.append(live_tables(alias))
    for step in range(len(names), 0, -1):
        name = names[step - 1]
        unapply(alias, label, name)
        assert applied(alias, label) == set(names[: step - 1])
        assert schema_differences(alias, label, history) == [], f"after {label}.{name} backwards"
        assert live_tables(alias) == snapshots[step - 1], f"{label}.{name} does not undo itself"
