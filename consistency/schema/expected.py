"""Table shapes implied by the migrations applied on a database alias."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connections, models, router
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.state import ProjectState

from .shape import Key, TableShape, normalise_type


def applied_state(alias: str) -> ProjectState:
    """The project state after the migrations recorded as applied on ``alias``.

    Apps without migrations are taken as they are (``migrate --run-syncdb`` creates them).
    """
    loader = MigrationLoader(connections[alias])
    applied = [node for node in loader.applied_migrations if node in loader.graph.nodes]
    return loader.graph.make_state(nodes=applied, at_end=True, real_apps=loader.unmigrated_apps)


def _column_keys(field: models.Field, supports_fks: bool) -> set[Key]:
    column: tuple[str, ...] = (str(field.column),)
    keys: set[Key] = set()
    if field.primary_key:
        keys.add(("pk", column))
    elif field.unique:
        keys.add(("unique", column))
    elif getattr(field, "db_index", False):
        keys.add(("index", column))
    if field.is_relation and getattr(field, "db_constraint", False) and supports_fks:
        keys.add(("fk", column))
    return keys


def model_shape(alias: str, model: type[models.Model]) -> TableShape:
    """The shape ``model`` (a migration state's model) gives its table on ``alias``."""
    connection = connections[alias]
    meta = model._meta
    columns: dict[str, str | None] = {}
    keys: set[Key] = set()
    supports_fks = connection.features.supports_foreign_keys
    for field in meta.local_fields:
        if not field.concrete or field.column is None:
            continue
        columns[field.column] = normalise_type(connection.vendor, field.db_type(connection))
        keys |= _column_keys(field, supports_fks)
    column_of: dict[str, str] = {f.name: str(f.column) for f in meta.local_fields}
    for together in meta.unique_together:
        keys.add(("unique", tuple(column_of[name] for name in together)))
    names: set[str] = set()
    for index in meta.indexes:
        names.add(index.name)
        if index.fields and not index.condition:
            keys.add(("index", tuple(column_of[name.lstrip("-")] for name in index.fields)))
    for constraint in meta.constraints:
        names.add(constraint.name)
        if isinstance(constraint, models.UniqueConstraint) and constraint.fields and not constraint.condition:
            keys.add(("unique", tuple(column_of[name] for name in constraint.fields)))
    return TableShape(columns=columns, keys=frozenset(keys), names=frozenset(names))


def expected_tables(
    alias: str, state: ProjectState, app_labels: Iterable[str] | None = None
) -> dict[str, TableShape]:
    """Tables ``state`` puts on ``alias`` (only ``app_labels``' when given), by name."""
    wanted = set(app_labels) if app_labels is not None else None
    tables: dict[str, TableShape] = {}
    for model in state.apps.get_models(include_auto_created=True):
        meta = model._meta
        if wanted is not None and meta.app_label not in wanted:
            continue
        if not meta.managed or meta.proxy or meta.swapped:
            continue
        if not router.allow_migrate_model(alias, model):
            continue
        tables[meta.db_table] = model_shape(alias, model)
    return tables
