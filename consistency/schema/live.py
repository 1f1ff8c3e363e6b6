"""Read table shapes from a database through Django's introspection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import connections

from consistency.engine.rowside import quote_ident

from .shape import Key, TableShape, normalise_type

#: Tables Django keeps for itself on every database; never part of a migration's state.
BOOKKEEPING_TABLES = frozenset({"django_migrations"})


def _column_types(connection: Any, cursor: Any, table: str) -> dict[str, str | None]:
    if connection.vendor == "postgresql":
        cursor.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            [quote_ident(table)],  # regclass parses identifier syntax; an embedded quote doubled
        )
        return {name: normalise_type("postgresql", kind) for name, kind in cursor.fetchall()}
    described = connection.introspection.get_table_description(cursor, table)
    if connection.vendor == "sqlite":
        return {col.name: normalise_type("sqlite", str(col.type_code)) for col in described}
    return {col.name: None for col in described}


def _keys(constraints: Mapping[str, Mapping[str, Any]]) -> frozenset[Key]:
    keys: set[Key] = set()
    for info in constraints.values():
        columns = tuple(info.get("columns") or ())
        if not columns or None in columns:
            continue  # an expression index: not comparable by columns
        if info.get("primary_key"):
            keys.add(("pk", columns))
        if info.get("unique") and not info.get("primary_key"):
            keys.add(("unique", columns))
        if info.get("foreign_key"):
            keys.add(("fk", columns))
        if info.get("index") and not info.get("unique"):
            keys.add(("index", columns))
    return frozenset(keys)


def live_table(alias: str, table: str) -> TableShape:
    """The shape of one existing table on ``alias``."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
        return TableShape(
            columns=_column_types(connection, cursor, table),
            keys=_keys(constraints),
            names=frozenset(constraints),
        )


def live_tables(alias: str) -> dict[str, TableShape]:
    """Every table on ``alias`` (views and Django's bookkeeping left out), by name."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        names = connection.introspection.table_names(cursor)
    return {name: live_table(alias, name) for name in names if name not in BOOKKEEPING_TABLES}
