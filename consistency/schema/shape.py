"""A table's shape: columns with their types, keys and named constraints, comparable across sources."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: A key is (kind, columns); kind is "pk", "unique", "index" or "fk".
Key = tuple[str, tuple[str, ...]]

# Django's PostgreSQL type names, spelled the way format_type() spells them.
_PG_SPELLINGS = (
    (re.compile(r"^varchar\("), "character varying("),
    (re.compile(r"^char\("), "character("),
    (re.compile(r"^smallserial$"), "smallint"),
    (re.compile(r"^bigserial$"), "bigint"),
    (re.compile(r"^serial$"), "integer"),
)


def normalise_type(vendor: str, db_type: str | None) -> str | None:
    """One spelling per column type, so a migration's type and the database's compare equal."""
    if db_type is None:
        return None
    text = re.sub(r"\s+", " ", db_type.strip().lower())
    text = re.sub(r"\s*,\s*", ",", text)
    if vendor == "postgresql":
        for pattern, spelling in _PG_SPELLINGS:
            text = pattern.sub(spelling, text)
    return text


@dataclass(frozen=True)
class TableShape:
    """Columns (name -> normalised type, None when unknown), keys, and constraint names."""

    columns: dict[str, str | None] = field(default_factory=dict)
    keys: frozenset[Key] = frozenset()
    names: frozenset[str] = frozenset()

    def satisfies(self, key: Key) -> bool:
        """True when this table has ``key``, or a stronger key on the same columns."""
        kind, columns = key
        stronger = {
            "pk": ("pk",),
            "unique": ("unique", "pk"),
            "index": ("index", "unique", "pk"),
            "fk": ("fk",),
        }
        return any((k, columns) in self.keys for k in stronger[kind])
