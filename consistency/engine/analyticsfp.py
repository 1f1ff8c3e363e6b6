"""One fingerprint for a backend row and its ClickHouse event, computed on either side.

A row's text is its event columns (``analytics_schema``'s mapping, without
``version`` and ``deleted``) joined by U+001F, DateTime as epoch seconds. Its
fingerprint is the first 8 bytes of MD5(text) as a big-endian signed 64-bit
integer: ``md5_64`` in Python, ``FP_SQL`` inside ClickHouse (18.16 and current
alike), and ``('x'||substr(md5(t),1,16))::bit(64)::bigint`` on PostgreSQL.
Rows are spread over 4096 buckets by the first 3 hex digits of MD5(id).
Message content is canonical JSON, which PostgreSQL's jsonb text is not, so
the backend side renders rows in Python (one streamed scan) on every database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import Model, OuterRef, QuerySet, Subquery

from consistency.backend.models import Message, Thread, ToolUsageLog
from consistency.stores.analytics_schema import (
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
BUCKET_DIGITS = 3


def md5_64(text: str) -> int:
    """The first 8 bytes of MD5(``text``), big-endian, signed."""
    return int.from_bytes(hashlib.md5(text.encode()).digest()[:8], "big", signed=True)  # noqa: S324


def bucket_of(key: Any) -> str:
    return hashlib.md5(str(key).encode()).hexdigest()[:BUCKET_DIGITS]  # noqa: S324


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

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for c in self.types if c not in ("version", "deleted"))

    def fingerprint(self, event: Sequence[Any]) -> int:
        return md5_64(SEP.join(render(v) for v in event[: len(self.columns)]))

    def key_of(self, value: Any) -> Any:
        return int(value) if self.types["id"].startswith(("UInt", "Int")) else str(value)

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

    def bucket_sql(self) -> str:
        return f"lower(substring(hex(MD5(toString(id))), 1, {BUCKET_DIGITS}))"

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
        for row in qs.values(*self.source_fields).iterator(chunk_size=5000):
            yield self.to_event(row)


def _message(row: dict[str, Any]) -> tuple[Any, ...]:
    return message_event_row(row, row["owner"] or "", 0)


def _tool_usage(row: dict[str, Any]) -> tuple[Any, ...]:
    return tool_usage_event_row(row, 0)


MESSAGES = EventSpec(
    MESSAGE_EVENTS,
    Message,
    MESSAGE_EVENT_TYPES,
    _message,
    ("id", "thread_id", "owner", "role", "assistant_id", "run_id", "content", "created_at"),
)
TOOL_USAGE = EventSpec(
    TOOL_USAGE_EVENTS,
    ToolUsageLog,
    TOOL_USAGE_EVENT_TYPES,
    _tool_usage,
    TOOL_USAGE_SOURCE_FIELDS,
)
SPECS = {spec.table: spec for spec in (MESSAGES, TOOL_USAGE)}
