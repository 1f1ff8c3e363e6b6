"""The analytics store on a ClickHouse server, through clickhouse-driver."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from zoneinfo import ZoneInfo

from clickhouse_driver import Client

from project.env import redact_url

from .analytics_sql import batches, describe, identifier, scrub, substitute
from .errors import StoreError

DEFAULT_DATABASE = "analytics"


class ClickHouseServerStore:
    """A ClickHouse server through clickhouse-driver's native protocol."""

    kind = "clickhouse"

    def __init__(
        self,
        url: str,
        database: str | None = None,
        *,
        connect_timeout: float = 5,
        send_receive_timeout: float = 60,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("clickhouse", "clickhouses"):
            raise ValueError(f"not a ClickHouse server URL: {redact_url(url)!r}")
        self.url = url
        self.database = database or parts.path.strip("/") or DEFAULT_DATABASE
        identifier(self.database, "ClickHouse database")
        query = parse_qs(parts.query)
        # The URL's own settings win; ours keep a dead server from hanging the caller.
        query.setdefault("connect_timeout", [str(connect_timeout)])
        query.setdefault("send_receive_timeout", [str(send_receive_timeout)])
        query.setdefault("sync_request_timeout", [str(connect_timeout)])
        self._urls = {
            name: parts._replace(path=f"/{name}", query=urlencode(query, doseq=True)).geturl()
            for name in ("default", self.database)
        }
        self.created_database = False
        self._client: Any = None
        self._server_tz: ZoneInfo | None = None
        self._lock = threading.RLock()

    def _fail(self, action: str, exc: BaseException) -> StoreError:
        where = f"{redact_url(self.url)} (database {self.database})"
        return StoreError(self.kind, scrub(f"{action} failed on {where}: {describe(exc)}", self.url))

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        try:
            # The target database may not exist yet, and the server refuses a
            # connection to a missing database: bootstrap through `default`.
            boot = Client.from_url(self._urls["default"])
            try:
                found = boot.execute(
                    "SELECT count() FROM system.databases WHERE name = %(db)s", {"db": self.database}
                )
                if not found[0][0]:
                    boot.execute(f"CREATE DATABASE IF NOT EXISTS {identifier(self.database)}")
                    self.created_database = True
            finally:
                boot.disconnect()
            client = Client.from_url(self._urls[self.database])
            client.execute("SELECT 1")
            self._server_tz = ZoneInfo(client.connection.server_info.timezone or "UTC")
        except Exception as exc:
            raise self._fail("connect", exc) from exc
        self._client = client
        return client

    def _normalise(self, value: Any) -> Any:
        if isinstance(value, datetime):
            # A DateTime without a zone comes back naive in the server's zone.
            if value.tzinfo is None:
                value = value.replace(tzinfo=self._server_tz)
            return value.astimezone(UTC)
        if isinstance(value, list):
            return [self._normalise(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._normalise(v) for v in value)
        return value

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a SELECT and return its rows."""
        text = substitute(sql, params)
        with self._lock:
            client = self._connect()
            try:
                rows, types = client.execute(text, with_column_types=True)
            except Exception as exc:
                raise self._fail("query", exc) from exc
        timed = [i for i, (_, kind) in enumerate(types) if "DateTime" in kind]
        if not timed:
            return [tuple(row) for row in rows]
        out = []
        for row in rows:
            values = list(row)
            for i in timed:
                values[i] = self._normalise(values[i])
            out.append(tuple(values))
        return out

    def execute(self, sql: str) -> None:
        """Run a statement that returns no rows (DDL, ALTER, OPTIMIZE)."""
        with self._lock:
            client = self._connect()
            try:
                client.execute(sql)
            except Exception as exc:
                raise self._fail("execute", exc) from exc

    def insert(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], batch_size: int = 50_000
    ) -> int:
        """Insert ``rows`` into ``self.database.table`` in batches; return the row count."""
        cols = ", ".join(identifier(c, "column") for c in columns)
        statement = f"INSERT INTO {identifier(self.database)}.{identifier(table, 'table')} ({cols}) VALUES"
        total = 0
        with self._lock:
            client = self._connect()
            for batch in batches(rows, batch_size):
                try:
                    client.execute(statement, batch)
                except Exception as exc:
                    raise self._fail(f"insert into {table}", exc) from exc
                total += len(batch)
        return total

    def ping(self) -> None:
        """Raise StoreError unless the server answers."""
        self.query("SELECT 1")

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.disconnect()
                self._client = None
