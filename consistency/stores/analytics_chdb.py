"""The analytics store embedded in the process, through chDB.

chDB runs one embedded server per process, opened on one path at a time, so
every ChdbStore on a path shares one process-wide session (and its lock); asking
for a second path while the first is open is refused with a clear StoreError.
The session is set to UTC and to print DateTime as epoch seconds, so results
decode to the same Python types as clickhouse-driver's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

from .analytics_sql import batches, describe, identifier, json_rows, sql_literal, substitute
from .errors import StoreError

DEFAULT_DATABASE = "analytics"
_SESSION_SETTINGS = (
    "SET session_timezone = 'UTC'",
    "SET date_time_output_format = 'unix_timestamp'",
    "SET output_format_json_quote_decimals = 1",
    "SET output_format_json_quote_denormals = 1",
    "SET output_format_json_named_tuples_as_objects = 0",
)


@dataclass
class _Shared:
    path: str
    session: Any
    lock: threading.RLock
    users: int = 1
    current_database: str = "default"


_shared: _Shared | None = None
_shared_lock = threading.Lock()


def _acquire(path: str) -> _Shared:
    global _shared
    with _shared_lock:
        if _shared is not None:
            if _shared.path != path:
                raise StoreError(
                    "chdb",
                    f"chDB opens one path per process; {_shared.path} is open, so {path} cannot be",
                )
            _shared.users += 1
            return _shared
        from chdb.session import Session

        try:
            session = Session(path)
            for statement in _SESSION_SETTINGS:
                session.query(statement)
        except Exception as exc:
            raise StoreError("chdb", f"cannot open chDB at {path}: {describe(exc)}") from exc
        _shared = _Shared(path=path, session=session, lock=threading.RLock())
        return _shared


def _release(shared: _Shared) -> None:
    global _shared
    with _shared_lock:
        shared.users -= 1
        if shared.users == 0 and _shared is shared:
            shared.session.close()
            _shared = None


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _element_type(element: str) -> str:
    # A named tuple element reads "name Type"; a type has no space before its first "(".
    return element.split(" ", 1)[1] if " " in element.split("(", 1)[0] else element


def decoder(kind: str) -> Callable[[Any], Any]:
    """A function turning chDB's JSONCompact value of type ``kind`` into clickhouse-driver's type."""
    for wrapper in ("Nullable(", "LowCardinality("):
        if kind.startswith(wrapper):
            inner = decoder(kind[len(wrapper) : -1])
            return lambda v: None if v is None else inner(v)
    if kind.startswith("Array("):
        item = decoder(kind[6:-1])
        return lambda v: [item(x) for x in v]
    if kind.startswith("Tuple("):
        decoders = [decoder(_element_type(e)) for e in _split_top_level(kind[6:-1])]
        return lambda v: tuple(d(x) for d, x in zip(decoders, v, strict=True))
    if kind.startswith(("Int", "UInt")):
        return int
    if kind.startswith("Float"):
        return float
    if kind.startswith("Decimal"):
        return lambda v: Decimal(str(v))
    if kind.startswith("DateTime64"):
        return lambda v: datetime.fromtimestamp(float(v), UTC)
    if kind.startswith("DateTime"):
        return lambda v: datetime.fromtimestamp(int(v), UTC)
    if kind in ("Date", "Date32"):
        return date.fromisoformat
    if kind == "UUID":
        return UUID
    if kind == "Bool":
        return bool
    if kind == "Nothing":
        return lambda v: None
    return lambda v: v  # String, FixedString, Enum: already text


class ChdbStore:
    """ClickHouse embedded in this process (chDB), storing its data under ``path``."""

    kind = "chdb"

    def __init__(self, path: str | Path, database: str = DEFAULT_DATABASE) -> None:
        if not Path(path).is_absolute():
            raise ValueError(f"chDB path {str(path)!r} must be absolute")
        self.path = str(path)
        self.database = database
        identifier(database, "chDB database")
        self.created_database = False
        self._shared: _Shared | None = None

    @classmethod
    def from_url(cls, url: str, database: str | None = None) -> ChdbStore:
        """Build from ``chdb:///abs/path[?database=name]``."""
        parts = urlsplit(url)
        if parts.scheme != "chdb" or parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"chDB URL {url!r} must look like chdb:///abs/path[?database=name]")
        query = parse_qs(parts.query)
        unknown = sorted(set(query) - {"database"})
        if unknown:
            raise ValueError(f"chDB URL {url!r}: unknown option(s) {', '.join(unknown)}; only database=")
        return cls(parts.path, database or query.get("database", [DEFAULT_DATABASE])[0])

    def _run(self, action: str, sql: str, fmt: str = "CSV") -> Any:
        if self._shared is None:
            self._shared = _acquire(self.path)
            self._bootstrap()
        shared = self._shared
        with shared.lock:
            try:
                # Stores on other databases share the session: switch only when needed.
                if shared.current_database != self.database:
                    shared.session.query(f"USE {identifier(self.database)}")
                    shared.current_database = self.database
                return shared.session.query(sql, fmt)
            except Exception as exc:
                raise StoreError(self.kind, f"{action} failed on {self.path}: {describe(exc)}") from exc

    def _bootstrap(self) -> None:
        assert self._shared is not None
        with self._shared.lock:
            session = self._shared.session
            try:
                found = session.query(
                    f"SELECT count() FROM system.databases WHERE name = {sql_literal(self.database)}", "CSV"
                )
                if str(found).strip() == "0":
                    session.query(f"CREATE DATABASE IF NOT EXISTS {identifier(self.database)}")
                    self.created_database = True
            except Exception as exc:
                raise StoreError(self.kind, f"connect failed on {self.path}: {describe(exc)}") from exc

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a SELECT and return its rows."""
        result = self._run("query", substitute(sql, params), "JSONCompact")
        text = result.bytes()
        if not text.strip():
            return []
        payload = json.loads(text)
        decoders = [decoder(column["type"]) for column in payload["meta"]]
        return [tuple(d(v) for d, v in zip(decoders, row, strict=True)) for row in payload["data"]]

    def execute(self, sql: str) -> None:
        """Run a statement that returns no rows (DDL, ALTER, OPTIMIZE)."""
        self._run("execute", sql)

    def insert(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], batch_size: int = 50_000
    ) -> int:
        """Insert ``rows`` into ``self.database.table`` in batches; return the row count."""
        cols = ", ".join(identifier(c, "column") for c in columns)
        target = f"{identifier(self.database)}.{identifier(table, 'table')}"
        total = 0
        for batch in batches(rows, batch_size):
            # JSON rows need no hand escaping, and chDB reads inline data after FORMAT.
            self._run(
                f"insert into {table}",
                f"INSERT INTO {target} ({cols}) FORMAT JSONCompactEachRow\n" + json_rows(batch),
            )
            total += len(batch)
        return total

    def ping(self) -> None:
        """Raise StoreError unless the embedded server answers."""
        self.query("SELECT 1")

    def close(self) -> None:
        if self._shared is not None:
            _release(self._shared)
            self._shared = None
