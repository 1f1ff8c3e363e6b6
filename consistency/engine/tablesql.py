"""Statements on an audited table that the engine writes itself, every name through ``quote_ident``.

The ORM quotes names with ``ops.quote_name``, which leaves an embedded ``"`` undoubled,
and a ``%`` in a name breaks the DB-API's parameter interpolation. Reference parity and
repairs read and write the audited tables here instead: every statement is executed with
parameters (Django's cursors take the ``format`` paramstyle on PostgreSQL and SQLite
alike), so a ``%`` inside a quoted name is doubled as well. Values go in through the
fields' ``get_db_prep_*`` and come out through the ORM's converters, as with a queryset.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from django.db import connections, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.deletion import DO_NOTHING, get_candidate_relations_to_delete
from django.db.models.signals import post_delete, post_save, pre_delete, pre_save

from consistency.engine.rowside import ident

FETCH = 10_000  # rows per fetch, as the ORM's iterator(chunk_size=...) read them


class Table:
    """One model's table on one database alias."""

    def __init__(self, model: type[models.Model], alias: str) -> None:
        self.model, self.alias = model, alias
        self.name = ident(model._meta.db_table)

    @property
    def connection(self) -> BaseDatabaseWrapper:
        return connections[self.alias]

    def col(self, field: models.Field, prefix: str = "") -> str:
        """The quoted column, after ``prefix.`` when the statement names the table by an alias."""
        return f"{prefix}.{ident(str(field.column))}" if prefix else ident(str(field.column))

    def prep(self, field: models.Field, value: Any) -> Any:
        return field.get_db_prep_value(value, self.connection, prepared=False)

    def where_equal(self, fields: Sequence[models.Field], values: Sequence[Any]) -> tuple[str, list[Any]]:
        """`` WHERE a = %s AND b = %s`` and its parameters: one row by key."""
        sql = " AND ".join(f"{self.col(f)} = %s" for f in fields)
        return f" WHERE {sql}", [self.prep(f, v) for f, v in zip(fields, values, strict=True)]

    def where_in(self, field: models.Field, values: Sequence[Any], extra: str = "") -> tuple[str, list[Any]]:
        """`` WHERE col IN (%s, ...)`` (then ``extra``) and its parameters."""
        marks = ", ".join(["%s"] * len(values))
        return f" WHERE {self.col(field)} IN ({marks}){extra}", [self.prep(field, v) for v in values]

    def rows(
        self, sql: str, fields: Sequence[models.Field], params: Sequence[Any] = (), *, chunked: bool = False
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of ``sql``, whose leading columns are ``fields``, converted as the ORM would.

        ``chunked`` reads through a server-side cursor, as ``QuerySet.iterator()`` does
        (unless the alias disables them).
        """
        from django.db.models.sql.query import Query

        connection = self.connection
        compiler = connection.ops.compiler("SQLCompiler")(Query(self.model), connection, self.alias)
        converters = compiler.get_converters([f.get_col(self.model._meta.db_table) for f in fields])
        chunked = chunked and not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
        with connection.chunked_cursor() if chunked else connection.cursor() as cursor:
            cursor.execute(sql, list(params))
            while batch := cursor.fetchmany(FETCH):
                if converters:
                    batch = compiler.apply_converters(batch, converters)
                yield from (tuple(row) for row in batch)

    def select(
        self, fields: Sequence[models.Field], where: str = "", params: Sequence[Any] = (), **kwargs: Any
    ) -> Iterator[tuple[Any, ...]]:
        """``fields`` of the rows matching ``where``."""
        sql = f"SELECT {', '.join(self.col(f) for f in fields)} FROM {self.name}{where}"
        return self.rows(sql, fields, params, **kwargs)

    def exists(self, where: str, params: Sequence[Any]) -> bool:
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT 1 FROM {self.name}{where} LIMIT 1", list(params))
            return cursor.fetchone() is not None

    def execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run one statement; the rows it changed."""
        with self.connection.cursor() as cursor:
            cursor.execute(sql, list(params))
            return int(cursor.rowcount)

    def update(self, values: dict[models.Field, Any], where: str, params: Sequence[Any]) -> int:
        """``QuerySet.update(**values)``: no ``pre_save``, no signals."""
        sets = ", ".join(f"{self.col(f)} = %s" for f in values)
        prepped = [f.get_db_prep_save(v, self.connection) for f, v in values.items()]
        return self.execute(f"UPDATE {self.name} SET {sets}{where}", [*prepped, *params])

    def insert(self, obj: models.Model) -> None:
        """``obj.save(force_insert=True)`` for a model without parents or its own ``save()``:
        the fields' ``pre_save`` (defaults, ``auto_now``), the statement, the save signals."""
        meta = self.model._meta
        pre_save.send(sender=self.model, instance=obj, raw=False, using=self.alias, update_fields=None)
        pk_set = obj._is_pk_set()  # type: ignore[attr-defined]  # composite keys too
        columns, params = [], []
        for field in meta.local_concrete_fields:
            if field.generated or (field is meta.auto_field and not pk_set):
                continue
            value = field.pre_save(obj, add=True)
            if hasattr(value, "resolve_expression"):
                continue  # a database default (db_default): the database fills it in
            columns.append(self.col(field))
            params.append(field.get_db_prep_save(value, self.connection))
        sql = f"INSERT INTO {self.name} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(params))})"
        returning = not pk_set and meta.auto_field is not None
        with self.connection.cursor() as cursor:
            if returning and self.connection.features.can_return_columns_from_insert:
                cursor.execute(f"{sql} RETURNING {self.col(meta.pk)}", params)
                obj.pk = cursor.fetchone()[0]
            else:
                cursor.execute(sql, params)
                if returning:
                    obj.pk = cursor.lastrowid
        obj._state.db, obj._state.adding = self.alias, False
        post_save.send(
            sender=self.model, instance=obj, created=True, update_fields=None, raw=False, using=self.alias
        )

    def delete(self, where: str, params: Sequence[Any], origin: models.QuerySet) -> int:
        """``origin.delete()`` (``origin`` selects the same rows as ``where``): one statement,
        with the delete signals sent for each row when the model has receivers.

        A delete the ORM cascades in Python (reverse relations that are not ``DO_NOTHING``,
        parent models, generic relations) stays with Django's collector, and so with its quoting.
        """
        if self.cascades():
            return int(origin.delete()[0])
        instances: list[models.Model] = []
        if pre_delete.has_listeners(self.model) or post_delete.has_listeners(self.model):
            fields = self.model._meta.concrete_fields
            names = [f.attname for f in fields]
            instances = [
                self.model.from_db(self.alias, names, row) for row in self.select(fields, where, params)
            ]
        for obj in instances:
            pre_delete.send(sender=self.model, instance=obj, using=self.alias, origin=origin)
        deleted = self.execute(f"DELETE FROM {self.name}{where}", params)
        for obj in instances:
            post_delete.send(sender=self.model, instance=obj, using=self.alias, origin=origin)
        return deleted

    def cascades(self) -> bool:
        """True when deleting a row makes the ORM delete or update other rows (Collector's test)."""
        meta = self.model._meta
        return (
            bool((meta.concrete_model or self.model)._meta.parents)
            or any(
                r.field.remote_field.on_delete is not DO_NOTHING  # type: ignore[attr-defined]
                for r in get_candidate_relations_to_delete(meta)
            )
            or any(hasattr(f, "bulk_related_objects") for f in meta.private_fields)
        )


def saves_plainly(model: type[models.Model]) -> bool:
    """True when ``save()`` is Django's own and writes one table (``Table.insert`` is then exact)."""
    return model.save is models.Model.save and not model._meta.parents
