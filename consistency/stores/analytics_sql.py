"""SQL helpers shared by both analytics back ends.

Parameters use clickhouse-driver's ``%(name)s`` style and are rendered by
:func:`sql_literal` on both back ends, so a statement behaves the same on the
ClickHouse 18.16 server and on current chDB (``%`` in a statement that takes
parameters is written ``%%``). Datetimes are UTC throughout: naive values are
taken as UTC, aware ones converted, and the sub-second part is dropped because
``DateTime`` holds whole seconds.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\0": "\\0",
    "\b": "\\b",
    "\f": "\\f",
}
_ESCAPE_RE = re.compile("|".join(re.escape(c) for c in _ESCAPES))
_INFINITIES = (float("inf"), float("-inf"))


def identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` back-quoted, refusing anything but a plain SQL identifier."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"{what} {name!r} is not a plain identifier (letters, digits, underscore)")
    return f"`{name}`"


def to_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; naive values are taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def sql_literal(value: Any) -> str:
    """Render ``value`` as a ClickHouse literal that 18.16 and current versions parse alike."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):  # before int: 18.16 has no true/false literals
        return "1" if value else "0"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        # nan and inf are ClickHouse keywords; repr keeps every digit of the rest.
        return str(value) if value != value or value in _INFINITIES else repr(value)
    if isinstance(value, str):
        return "'" + _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], value) + "'"
    if isinstance(value, UUID):
        return sql_literal(str(value))
    if isinstance(value, datetime):  # before date: datetime is a date
        # DateTime has whole seconds; the fraction is dropped, as ClickHouse would.
        return f"toDateTime('{to_utc(value):%Y-%m-%d %H:%M:%S}', 'UTC')"
    if isinstance(value, date):
        return f"toDate('{value.isoformat()}')"
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("an empty list or tuple has no ClickHouse literal")
        inner = ", ".join(sql_literal(item) for item in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    raise TypeError(f"no ClickHouse literal for a {type(value).__name__}")


def substitute(sql: str, params: dict[str, Any] | None) -> str:
    """Replace ``%(name)s`` placeholders with literals, as clickhouse-driver does."""
    if params is None:
        return sql
    rendered = {}
    for name, value in params.items():
        try:
            rendered[name] = sql_literal(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"parameter {name!r}: {exc}") from exc
    try:
        return sql % rendered
    except KeyError as exc:
        raise ValueError(f"parameter {exc.args[0]!r} is used in the SQL but not given") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad placeholder in SQL ({exc}); write a literal % as %%") from exc


def batches(rows: Iterable[Sequence[Any]], size: int) -> Iterator[list[Sequence[Any]]]:
    """Split ``rows`` into lists of at most ``size``."""
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {size}")
    it = iter(rows)
    while batch := list(itertools.islice(it, size)):
        yield batch


def scrub(message: str, url: str) -> str:
    """``message`` with the password of ``url`` (if any) replaced by ``***``."""
    password = urlsplit(url).password
    return message.replace(password, "***") if password else message


def describe(exc: BaseException) -> str:
    """A one-line account of ``exc`` for a StoreError message."""
    # 18.16 appends a server stack trace to every exception; the first lines say what failed.
    text = str(exc).split("Stack trace:", 1)[0].strip()
    return " ".join(text.split())[:500] or type(exc).__name__


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return f"{to_utc(value):%Y-%m-%d %H:%M:%S}"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    raise TypeError(f"cannot insert a {type(value).__name__}")


def json_rows(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as JSONCompactEachRow text, the way the chDB store inserts them."""
    return "".join(json.dumps(list(row), default=_json_default, ensure_ascii=False) + "\n" for row in rows)
