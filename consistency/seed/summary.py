"""What each store holds, and whether the pairs that must agree do (``storesummary``).

A plain stand-in for the consistency engine: it reads every id on both sides,
which is fine for a demo data set and exactly what the engine will avoid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from consistency.auth_service.models import AuthUser
from consistency.backend.models import Message, ToolUsageLog, User
from consistency.cachekeys import CACHED_ENTITIES
from consistency.seed import cache as cache_side
from consistency.seed import sql
from consistency.seed.generate import SEEDED_MODELS
from consistency.seed.runner import DB_STORE, store_errors

_SAMPLE = 3


@dataclass(frozen=True)
class Count:
    """Rows (or keys, or vectors) one store holds for one table."""

    store: str
    table: str
    rows: int


@dataclass(frozen=True)
class Agreement:
    """Two sides that must hold the same keys (and, where given, the same values)."""

    name: str
    left: int
    right: int
    only_left: tuple[str, ...]
    only_right: tuple[str, ...]
    differing: tuple[str, ...]
    only_left_count: int
    only_right_count: int
    differing_count: int

    @property
    def ok(self) -> bool:
        return not (self.only_left_count or self.only_right_count or self.differing_count)

    def describe(self) -> str:
        if self.ok:
            return f"{self.name}: agree ({self.left:,} = {self.right:,})"
        parts = [f"{self.name}: DISAGREE ({self.left:,} vs {self.right:,})"]
        for label, count, sample in (
            ("only on the left", self.only_left_count, self.only_left),
            ("only on the right", self.only_right_count, self.only_right),
            ("with different values", self.differing_count, self.differing),
        ):
            if count:
                parts.append(f"{count:,} {label} (e.g. {', '.join(sample)})")
        return "; ".join(parts)


def compare(name: str, left: dict[str, Any], right: dict[str, Any]) -> Agreement:
    """Compare two ``key -> value`` maps (use ``None`` values to compare keys only)."""
    only_left = sorted(left.keys() - right.keys())
    only_right = sorted(right.keys() - left.keys())
    differing = sorted(k for k in left.keys() & right.keys() if left[k] != right[k])
    return Agreement(
        name,
        len(left),
        len(right),
        tuple(only_left[:_SAMPLE]),
        tuple(only_right[:_SAMPLE]),
        tuple(differing[:_SAMPLE]),
        len(only_left),
        len(only_right),
        len(differing),
    )


def _keys(values: Iterable[Any]) -> dict[str, None]:
    return dict.fromkeys(str(v) for v in values)


def _rows(model: type, *fields: str) -> Iterable[Any]:
    manager = model._default_manager.using(sql.alias_for(model))  # type: ignore[attr-defined]
    return manager.order_by().values_list(*fields, flat=len(fields) == 1).iterator(chunk_size=10_000)


def database_counts() -> list[Count]:
    out = []
    for model, rows in sql.row_counts(SEEDED_MODELS).items():
        out.append(Count(DB_STORE[sql.alias_for(model)], model._meta.db_table, rows))
    return out


def cache_counts() -> list[Count]:
    with store_errors("cache"):
        return [Count("cache", entity.pattern, cache_side.count_keys(entity)) for entity in CACHED_ENTITIES]


def users_agree() -> Agreement:
    def profile(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return row[1:]

    auth = {r[0]: profile(r) for r in _rows(AuthUser, "id", "email", "full_name", "is_active")}
    backend = {r[0]: profile(r) for r in _rows(User, "id", "email", "full_name", "is_active")}
    return compare("auth_users vs users (id, email, full_name, is_active)", auth, backend)


def analytics_report(store: Any) -> tuple[list[Count], list[Agreement]]:
    """Live event counts, and messages / tool usage logs against their events."""
    from consistency.seed import analytics

    messages = {m: u for m, u in _rows(Message, "id", "thread__user_id")}
    events = dict(analytics.live_rows(store, "message_events", ["id", "user_id"]))
    logs = _keys(_rows(ToolUsageLog, "id"))
    usage = _keys(r[0] for r in analytics.live_rows(store, "tool_usage_events", ["id"]))
    counts = [
        Count(store.kind, f"{store.database}.message_events (live)", len(events)),
        Count(store.kind, f"{store.database}.tool_usage_events (live)", len(usage)),
    ]
    return counts, [
        compare("messages vs message_events (id, user_id)", messages, events),
        compare("tool_usage_logs vs tool_usage_events (id)", logs, usage),
    ]


def vectors_report(store: Any) -> tuple[list[Count], list[Agreement]]:
    """The collection's size, and messages with an embedding against its ids."""
    # Loads the collection: milvus-lite releases it when the process that wrote it ends.
    store.ensure_collection()
    embedded = {e: m for m, e in _rows(Message, "id", "embedding_id") if e}
    stored: dict[str, Any] = {}
    for chunk in store.iter_ids(10_000):
        stored.update((str(e), str(m)) for e, m in chunk)
    counts = [Count("milvus", store.collection, int(store.count()))]
    return counts, [
        compare("messages with embedding vs vectors (embedding_id, message_id)", embedded, stored)
    ]
