"""The one error every store adapter raises when its store fails, and a message for any store failure.

``describe_failure`` turns whatever a store client raised (Django's database
errors wrapping psycopg's or sqlite3's, redis-py's, pymilvus', our own
``StoreError``) into one line that names the store first, so an operator reading
a failed run knows which store to look at.
"""

from __future__ import annotations

from collections.abc import Iterator


class StoreError(Exception):
    """A store could not be reached or failed a request; ``store`` names it."""

    def __init__(self, store: str, message: str) -> None:
        super().__init__(f"{store}: {message}")
        self.store = store
        self.message = message


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _database_alias(exc: BaseException) -> str:
    """The Django alias whose connection raised ``exc``: the innermost database wrapper or
    cursor wrapper on the traceback (the exception itself does not carry it)."""
    alias = ""
    for error in _chain(exc):
        tb = error.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            wrapper = getattr(owner, "db", owner)  # a CursorWrapper's .db, or the DatabaseWrapper
            found = getattr(wrapper, "alias", None)
            if isinstance(found, str) and hasattr(wrapper, "settings_dict"):
                alias = found
            tb = tb.tb_next
        if alias:
            return alias
    return alias


def _database(exc: BaseException) -> str:
    alias = _database_alias(exc)
    return f" database {alias!r}" if alias else ""


def store_of(exc: BaseException) -> str:
    """The name of the store ``exc`` came from ('' when it is not a store client's error)."""
    for error in _chain(exc):
        if isinstance(error, StoreError):
            return error.store
        alias = getattr(error, "database_alias", None)  # stores.deadline.QueryDeadlineExceeded
        if isinstance(alias, str):
            return f"PostgreSQL database {alias!r}"
        module = type(error).__module__.split(".")[0]
        if module in ("psycopg", "psycopg_pool", "psycopg2"):
            return "PostgreSQL" + _database(exc)
        if module == "sqlite3":
            return "SQLite" + _database(exc)
        if module == "redis":
            return "Redis"
        if module == "pymilvus":
            return "Milvus"
        if module == "clickhouse_driver":
            return "ClickHouse"
    return ""


def describe_error(exc: BaseException) -> str:
    """``<Type>: <message>``; a connection pool that stayed full, and a call the client-side
    deadline ended, are named as such."""
    for error in _chain(exc):
        if type(error).__name__ == "QueryDeadlineExceeded":  # stores.deadline's, maybe wrapped by Django
            return f"QueryDeadlineExceeded: {error}"
        if type(error).__name__ == "PoolTimeout":  # psycopg_pool's, wrapped by Django's OperationalError
            return f"PoolTimeout: {error}: every pooled connection stayed busy (DATABASE_POOL_MAX_SIZE)"
    return f"{type(exc).__name__}: {exc}".strip()


def describe_failure(exc: BaseException) -> str:
    """``<store> failed: <Type>: <message>``, or ``<Type>: <message>`` when no store is known."""
    text = describe_error(exc)
    store = store_of(exc)
    if not store or isinstance(exc, StoreError):
        return text
    return f"{store} failed: {text}"
