"""The bytes the cache stores for a row, fingerprinted inside PostgreSQL.

django-redis stores ``json.dumps(payload)`` (``", "`` / ``": "`` separators, ASCII
only, keys in payload order) and every payload value is a string, number, boolean,
null, ISO-8601 ``...Z`` datetime or a JSON field. For those PostgreSQL can print the
same text itself, so a full cache sweep hashes it in SQL (``md5_64`` of the text, as
the analytics fingerprints) instead of loading and rendering every row in Python.

PostgreSQL prints text the way Python does only where no rule differs: a row holding
a non-ASCII or control character, or a JSON field holding a number with a fraction or
exponent, gets a NULL fingerprint and is rendered in Python (``cachecheck``), as are
entities with a field type this module does not know. Tests pin the equality per type.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from django.db import models

from consistency.cachekeys import CachedEntity

PRINTABLE = "'^[ -~]*$'"  # ASCII without control characters: json.dumps escapes nothing else then
# A number with a fraction or exponent in jsonb's text: where a value starts (after "[", ", "
# or ": ", or at the start), digits then "." or "e". Also matches such text inside a string,
# which only sends that row to Python.
FRACTION = "'(^|: |\\[|, )-?[0-9]+[.eE]'"


def fingerprint(raw: bytes) -> int:
    """The first 8 bytes of MD5(``raw``), big-endian, signed: what ``fingerprint_sql`` computes."""
    return int.from_bytes(hashlib.md5(raw).digest()[:8], "big", signed=True)  # noqa: S324


def _value_sql(field: models.Field) -> str | None:
    """SQL printing ``field``'s column as json.dumps prints its payload value, NULL where it cannot."""
    col = f'"{field.column}"'
    if isinstance(field, models.ForeignKey):  # the payload holds the raw ``<name>_id``
        field = field.target_field
    if isinstance(field, models.DateTimeField):
        utc = f"({col} AT TIME ZONE 'UTC')"
        fraction = (
            f"CASE WHEN mod(extract(microseconds FROM {utc})::bigint, 1000000) = 0 THEN '' "
            f"ELSE to_char({utc}, '.US') END"
        )
        iso = f"""'"' || to_char({utc}, 'YYYY-MM-DD"T"HH24:MI:SS') || {fraction} || 'Z"'"""
        return f"CASE WHEN {col} IS NULL THEN 'null' ELSE {iso} END"
    if isinstance(field, models.DateField):
        return None
    if isinstance(field, models.BooleanField):
        return f"CASE WHEN {col} THEN 'true' WHEN NOT {col} THEN 'false' ELSE 'null' END"
    if isinstance(field, models.IntegerField | models.AutoField):  # Big/Small/Positive too
        return f"coalesce({col}::text, 'null')"
    if isinstance(field, models.JSONField):
        text = f"{col}::text"
        return (
            f"CASE WHEN {col} IS NULL THEN 'null' "
            f"WHEN {text} ~ {PRINTABLE} AND {text} !~ {FRACTION} THEN {text} END"
        )
    if isinstance(field, models.UUIDField):
        return f"coalesce(to_json({col}::text)::text, 'null')"
    if isinstance(field, models.CharField | models.TextField | models.GenericIPAddressField):
        return f"CASE WHEN {col} IS NULL THEN 'null' WHEN {col} ~ {PRINTABLE} THEN to_json({col}::text)::text END"
    return None


def fingerprint_sql(entity: CachedEntity, fields: Sequence[str]) -> str | None:
    """SQL for the fingerprint of the bytes the cache stores for a row of ``entity``
    (payload ``fields`` in order), or None when a field's type has no SQL form here."""
    meta = entity.model._meta
    parts = []
    for i, name in enumerate(fields):
        field = meta.get_field(name)
        if not isinstance(field, models.Field) or name not in (field.attname, field.name):
            return None
        value = _value_sql(field)
        if value is None:
            return None
        key = ("{" if i == 0 else ", ") + json.dumps(name) + ": "
        parts.append(f"'{key}' || {value}")
    text = " || ".join(parts) + " || '}'" if parts else "'{}'"
    return f"('x' || substr(md5({text}), 1, 16))::bit(64)::bigint"


def select_sql(entity: CachedEntity, fields: Sequence[str], *, by_id: bool) -> str | None:
    """``SELECT pk::text, fingerprint FROM table`` (``by_id``: ``WHERE pk = ANY(%s)``), or None."""
    fp = fingerprint_sql(entity, fields)
    if fp is None:
        return None
    meta = entity.model._meta
    pk = f'"{meta.pk.column}"'
    where = f" WHERE {pk} = ANY(%s)" if by_id else ""
    return f'SELECT {pk}::text, {fp} FROM "{meta.db_table}"{where}'
