"""The differences between the tables migrations imply and the tables a database holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .shape import TableShape


@dataclass(frozen=True)
class Difference:
    """One way a live table departs from its migrations; ``key`` is ``table`` or ``table.column``."""

    key: str
    problem: str  # missing_table | extra_table | missing_column | extra_column | type_changed | missing_key | extra_index | missing_constraint
    detail: str


def compare_table(table: str, expected: TableShape, live: TableShape) -> list[Difference]:
    """What ``live`` lacks, adds or changes compared with ``expected``."""
    found: list[Difference] = []
    for column, kind in expected.columns.items():
        if column not in live.columns:
            found.append(
                Difference(f"{table}.{column}", "missing_column", f"column {table}.{column} is missing")
            )
        elif kind is not None and live.columns[column] is not None and kind != live.columns[column]:
            found.append(
                Difference(
                    f"{table}.{column}",
                    "type_changed",
                    f"column {table}.{column} is {live.columns[column]}, migrations say {kind}",
                )
            )
    for column in live.columns.keys() - expected.columns.keys():
        found.append(
            Difference(f"{table}.{column}", "extra_column", f"column {table}.{column} has no migration")
        )
    for key in sorted(expected.keys):
        kind, columns = key
        if all(c in live.columns for c in columns) and not live.satisfies(key):
            shown = ",".join(columns)
            found.append(
                Difference(f"{table}({shown})", "missing_key", f"{kind} on {table}({shown}) is missing")
            )
    covered = {columns for _, columns in expected.keys}
    for kind, columns in sorted(live.keys - expected.keys):
        # An index made by hand; one on columns a declared key already covers is the
        # database's own (PostgreSQL's pattern-ops twin of a unique or foreign-key index).
        if kind == "index" and columns not in covered:
            shown = ",".join(columns)
            found.append(
                Difference(f"{table}({shown})", "extra_index", f"index on {table}({shown}) has no migration")
            )
    for name in sorted(expected.names - live.names):
        found.append(Difference(f"{table}.{name}", "missing_constraint", f"{name} on {table} is missing"))
    return found


def compare(expected: Mapping[str, TableShape], live: Mapping[str, TableShape]) -> list[Difference]:
    """Every difference between two sets of tables, ordered by key."""
    found: list[Difference] = []
    for table in expected.keys() - live.keys():
        found.append(Difference(table, "missing_table", f"table {table} is missing"))
    for table in live.keys() - expected.keys():
        found.append(Difference(table, "extra_table", f"table {table} has no migration"))
    for table in expected.keys() & live.keys():
        found.extend(compare_table(table, expected[table], live[table]))
    return sorted(found, key=lambda d: (d.key, d.problem))
