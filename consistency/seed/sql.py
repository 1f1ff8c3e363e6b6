"""Bulk writes to the two databases: COPY on PostgreSQL, ``bulk_create`` elsewhere.

One save per row would take hours for a million users; COPY streams a table's
rows in one statement. Each table's share of a batch is written in its own
transaction, so a failure never leaves half a table's batch behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from django.core.management.color import no_style
from django.db import DEFAULT_DB_ALIAS, connections, router, transaction
from django.db.models import Model

Row = dict[str, Any]


def alias_for(model: type[Model]) -> str:
    """The database alias that holds ``model`` (the router decides)."""
    return router.db_for_write(model) or DEFAULT_DB_ALIAS


def _copy_plan(model: type[Model]) -> tuple[str, list[tuple[str, bool]]]:
    fields = model._meta.concrete_fields
    quote = connections[alias_for(model)].ops.quote_name
    columns = ", ".join(quote(f.column or f.attname) for f in fields)
    sql = f"COPY {quote(model._meta.db_table)} ({columns}) FROM STDIN"
    return sql, [(f.attname, f.get_internal_type() == "JSONField") for f in fields]


def write_rows(model: type[Model], rows: Sequence[Row], batch_size: int) -> int:
    """Insert ``rows`` (dicts keyed by attname) into ``model``'s table; returns the count."""
    if not rows:
        return 0
    alias = alias_for(model)
    connection = connections[alias]
    if connection.vendor != "postgresql":
        objs = [model(**row) for row in rows]
        with transaction.atomic(using=alias):
            model._default_manager.using(alias).bulk_create(objs, batch_size=batch_size)
        return len(rows)
    sql, plan = _copy_plan(model)
    dumps = json.dumps
    # Django's cursor wrapper hands .copy() to the psycopg 3 cursor.
    with transaction.atomic(using=alias), connection.cursor() as cursor, cursor.copy(sql) as copy:
        write = copy.write_row
        for row in rows:
            write(
                [
                    dumps(row[name]) if is_json and row[name] is not None else row[name]
                    for name, is_json in plan
                ]
            )
    return len(rows)


def reset_sequences(models: Iterable[type[Model]]) -> None:
    """Move id sequences past the ids the seed assigned, so later inserts do not collide."""
    by_alias: dict[str, list[type[Model]]] = {}
    for model in models:
        by_alias.setdefault(alias_for(model), []).append(model)
    for alias, group in by_alias.items():
        connection = connections[alias]
        statements = connection.ops.sequence_reset_sql(no_style(), group)
        if statements:
            with transaction.atomic(using=alias), connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)


def flush(models: Iterable[type[Model]]) -> None:
    """Empty ``models``' tables (and restart their sequences) on each alias."""
    by_alias: dict[str, list[str]] = {}
    for model in models:
        by_alias.setdefault(alias_for(model), []).append(model._meta.db_table)
    for alias, tables in by_alias.items():
        connection = connections[alias]
        statements = connection.ops.sql_flush(no_style(), tables, reset_sequences=True)
        connection.ops.execute_sql_flush(statements)


def row_counts(models: Iterable[type[Model]]) -> dict[type[Model], int]:
    """``count(*)`` of each model's table on its own alias."""
    return {model: model._default_manager.using(alias_for(model)).count() for model in models}


def non_empty(models: Iterable[type[Model]]) -> list[type[Model]]:
    """The models whose table holds at least one row."""
    return [model for model in models if model._default_manager.using(alias_for(model)).exists()]
