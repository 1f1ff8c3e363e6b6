"""The analytics store: one small client interface over a ClickHouse server or chDB.

Both back ends return rows as tuples of the same Python types (int, float, str,
Decimal, date, and every DateTime as an aware UTC ``datetime``), take
``%(name)s`` parameters rendered the same way (see ``analytics_sql``), and
raise every failure as ``StoreError`` naming ``clickhouse`` or ``chdb``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from project.env import redact_url

from .cached import CachedStore

if TYPE_CHECKING:
    from .analytics_chdb import ChdbStore
    from .analytics_server import ClickHouseServerStore


def __getattr__(name: str) -> Any:
    # The back ends load on first use: clickhouse-driver alone adds ~0.15 s to every
    # manage.py start, and most commands never touch the analytics store.
    if name == "ChdbStore":
        from .analytics_chdb import ChdbStore

        return ChdbStore
    if name == "ClickHouseServerStore":
        from .analytics_server import ClickHouseServerStore

        return ClickHouseServerStore
    raise AttributeError(name)


__all__ = [
    "AnalyticsStore",
    "ChdbStore",
    "ClickHouseServerStore",
    "close_analytics",
    "connect",
    "get_analytics",
]


class AnalyticsStore(Protocol):
    """What the rest of the app may ask of the analytics store.

    ``created_database`` is True when this instance created its database on
    first use (stores create a missing database before anything else).
    """

    kind: str
    database: str
    created_database: bool

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]: ...

    def execute(self, sql: str) -> None: ...

    def insert(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], batch_size: int = 50_000
    ) -> int: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


def connect(url: str, database: str | None = None) -> AnalyticsStore:
    """A store for a ``clickhouse://``, ``clickhouses://`` or ``chdb:///abs/path[?database=]`` URL.

    ``database`` overrides the one the URL names (its path, or ``?database=`` for chDB).
    """
    scheme = urlsplit(url).scheme
    if scheme in ("clickhouse", "clickhouses"):
        from .analytics_server import ClickHouseServerStore

        return ClickHouseServerStore(url, database)
    if scheme == "chdb":
        from .analytics_chdb import ChdbStore

        return ChdbStore.from_url(url, database)
    raise ValueError(
        f"analytics URL {redact_url(url)!r} has scheme {scheme!r}; "
        "expected clickhouse://, clickhouses:// or chdb:///abs/path"
    )


def _analytics_key() -> tuple[str, str | None]:
    from django.conf import settings

    from consistency.conf import app_settings

    return settings.CLICKHOUSE_URL, app_settings.CLICKHOUSE_DATABASE


_stores: CachedStore[AnalyticsStore] = CachedStore(_analytics_key, connect, ("CLICKHOUSE_URL", "CONSISTENCY"))


def get_analytics() -> AnalyticsStore:
    """The process-wide store for CLICKHOUSE_URL (and CONSISTENCY["CLICKHOUSE_DATABASE"])."""
    return _stores.get()


def close_analytics() -> None:
    """Close and forget the cached store; the next get_analytics() builds a new one."""
    _stores.close()
