"""One fingerprint for a backend row and its ClickHouse event, computed on either side.

A row's text is its event columns (``analytics_schema``'s mapping, without
``version`` and ``deleted``) joined by U+001F, DateTime as epoch seconds. Its
fingerprint is the first 8 bytes of MD5(text) as a big-endian signed 64-bit
integer: ``md5_64`` in Python, ``FP_SQL`` inside ClickHouse (18.16 and current
alike), and ``('x'||substr(md5(t),1,16))::bit(64)::bigint`` on PostgreSQL.
Rows are grouped into key ranges (``analyticsranges``).
Message content is rendered as PostgreSQL prints jsonb (``canonical_json``), so on
PostgreSQL the backend side computes text, fingerprint and bucket in SQL
(``pg_select``) and only aggregates leave the database; on other databases
(SQLite) it renders rows in Python from one streamed scan.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import Model, OuterRef, QuerySet, Subquery, TextField
from django.db.models.functions import Cast

from consistency.backend.models import Message, Thread, ToolUsageLog
from consistency.stores.analytics_schema import (
    MESSAGE_EVENT_COLUMNS,
    MESSAGE_EVENT_TYPES,
    MESSAGE_EVENTS,
    TOOL_USAGE_EVENT_TYPES,
    TOOL_USAGE_EVENTS,
    TOOL_USAGE_SOURCE_FIELDS,
    message_event_row,
    tool_usage_event_row,
)

SEP = "\x1f"
MASK = (1 << 64) - 1


def md5_64(text: str) -> int:
    """The first 8 bytes of MD5(``text``), big-endian, signed."""
    return int.from_bytes(hashlib.md5(text.encode()).digest()[:8], "big", signed=True)  # noqa: S324


def render(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return str(int(value.timestamp()))
    return str(value)


@dataclass(frozen=True)
class EventSpec:
    """A backend table, its event table and the mapping between their rows."""

    table: str
    model: type[Model]
    types: dict[str, str]
    to_event: Callable[[dict[str, Any]], tuple[Any, ...]]  # version 0, live
    source_fields: tuple[str, ...]
    #: PostgreSQL: the FROM clause and, per event column, the SQL for its text.
    pg_from: str = ""
    pg_texts: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for c in self.types if c not in ("version", "deleted"))

    def fingerprint(self, event: Sequence[Any]) -> int:
        return md5_64(SEP.join(render(v) for v in event[: len(self.columns)]))

    def key_of(self, value: Any) -> Any:
        return int(value) if self.integer_key else str(value)

    def text_sql(self) -> str:
        parts = []
        for column in self.columns:
            kind = self.types[column]
            if kind.startswith("DateTime"):
                parts.append(f"toString(toUInt32(`{column}`))")
            elif kind == "String":
                parts.append(f"`{column}`")
            else:
                parts.append(f"toString(`{column}`)")
        return "concat(" + ", '\\x1f', ".join(parts) + ")"

    def fp_sql(self) -> str:
        return f"reinterpretAsInt64(reverse(unhex(substring(hex(MD5({self.text_sql()})), 1, 16))))"

    def pg_id_sql(self) -> str:
        return self.pg_texts[0]

    def pg_fp_sql(self) -> str:
        """The fingerprint of a backend row inside PostgreSQL: equal to ``fingerprint``."""
        text = "concat_ws(chr(31), " + ", ".join(self.pg_texts) + ")"
        return f"('x' || substr(md5({text}), 1, 16))::bit(64)::bigint"

    @property
    def integer_key(self) -> bool:
        return self.types["id"].startswith(("UInt", "Int"))

    @property
    def pg_key(self) -> str:
        """The backend key column as the FROM clause names it (``m.id``): what the index orders."""
        return self.pg_texts[0].split("::", 1)[0]

    def pg_select(self, *columns: str, where: str = "", bucket: str = "") -> str:
        """``SELECT columns FROM`` the backend table (``id``, ``b``, ``f`` name the row's key text,
        its bucket, the SQL ``bucket``, and fingerprint)."""
        named = {"id": self.pg_id_sql(), "b": bucket, "f": self.pg_fp_sql()}
        selected = ", ".join(f"{named[c]} AS {c}" if c in named else c for c in columns)
        return f"SELECT {selected} FROM {self.pg_from}" + (f" WHERE {where}" if where else "")

    def source_rows(
        self, alias: str, ids: Sequence[Any] | None = None, filters: dict[str, Any] | None = None
    ) -> Iterator[tuple[Any, ...]]:
        """Events (version 0) for the backend rows, all or those with ``ids``/``filters``, streamed."""
        qs: QuerySet = self.model._default_manager.using(alias).filter(**(filters or {})).order_by()
        if self.model is Message:
            owner = (
                Thread._default_manager.using(alias).filter(pk=OuterRef("thread_id")).values("user_id")[:1]
            )
            qs = qs.annotate(owner=Subquery(owner))
        if ids is not None:
            qs = qs.filter(pk__in=list(ids))
        fields = self.source_fields
        if self.model is Message and _vendor(alias) == "postgresql":
            # The stored jsonb text itself: what the SQL side hashes, whatever wrote the row.
            qs = qs.annotate(content_text=Cast("content", TextField()))
            fields = (*fields, "content_text")
        for row in qs.values(*fields).iterator(chunk_size=5000):
            yield self.to_event(row)


def _vendor(alias: str) -> str:
    return str(connections[alias].vendor)


def _message(row: dict[str, Any]) -> tuple[Any, ...]:
    event = message_event_row(row, row["owner"] or "", 0)
    if "content_text" in row:
        index = MESSAGE_EVENT_COLUMNS.index("content")
        event = (*event[:index], row["content_text"], *event[index + 1 :])
    return event


def _tool_usage(row: dict[str, Any]) -> tuple[Any, ...]:
    return tool_usage_event_row(row, 0)


MESSAGES = EventSpec(
    MESSAGE_EVENTS,
    Message,
    MESSAGE_EVENT_TYPES,
    _message,
    ("id", "thread_id", "owner", "role", "assistant_id", "run_id", "content", "created_at"),
    "messages m LEFT JOIN threads t ON t.id = m.thread_id",
    (
        "m.id",
        "m.thread_id",
        "coalesce(t.user_id, '')",
        "m.role",
        "coalesce(m.assistant_id, '')",
        "coalesce(m.run_id, '')",
        "m.content::text",
        "m.created_at::text",
    ),
)
TOOL_USAGE = EventSpec(
    TOOL_USAGE_EVENTS,
    ToolUsageLog,
    TOOL_USAGE_EVENT_TYPES,
    _tool_usage,
    TOOL_USAGE_SOURCE_FIELDS,
    "tool_usage_logs l",
    (
        "l.id::text",
        "l.user_id",
        "l.tool_name",
        "l.category",
        "l.execution_time_ms::text",
        "l.tokens_used::text",
        "l.cost_cents::text",
        "l.status",
        "floor(extract(epoch FROM l.created_at))::bigint::text",
    ),
)
SPECS = {spec.table: spec for spec in (MESSAGES, TOOL_USAGE)}
