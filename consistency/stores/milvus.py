"""pymilvus access shared by the vector store: import, gRPC options, filter literals, paging.

Kept apart from ``vectors.py`` (the collection and its rows) because each piece
works around a specific pymilvus or Milvus behaviour, documented where it is.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

from .errors import StoreError

_import_lock = threading.Lock()

# pymilvus pings every 10 s even when idle; a gRPC server's default policy (the
# milvus-lite server's too) allows one ping in 5 minutes and answers more with
# GOAWAY "too many pings", after which the cached client cannot reconnect.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 300_000, "grpc.keepalive_permit_without_calls": False}

#: Milvus' largest query limit.
MAX_PAGE = 16384


def pymilvus() -> ModuleType:
    """pymilvus, imported with a milvus-lite ``MILVUS_URI`` hidden from it."""
    # pymilvus reads $MILVUS_URI on import as its default server and raises on a .db
    # path, which this project accepts; every client here is given its URI explicitly.
    with _import_lock:
        value = os.environ.get("MILVUS_URI", "")
        if "://" in value or not value:
            import pymilvus as module
        else:
            del os.environ["MILVUS_URI"]
            try:
                import pymilvus as module
            finally:
                os.environ["MILVUS_URI"] = value
    return module


def literal(value: str) -> str:
    """A string literal for a Milvus filter expression."""
    # Milvus reads JSON-style escapes; pymilvus' own `ids=` quoting leaves `\` and `"` raw.
    return json.dumps(str(value), ensure_ascii=False)


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def key_ordered_pages(
    page: Callable[[str, int], list[dict[str, Any]]],
    key: str,
    batch_size: int,
    what: str,
    *,
    low: str | None = None,
    high: str | None = None,
    max_page: int = MAX_PAGE,
    short_page_ends: bool = False,
) -> Iterator[list[dict[str, Any]]]:
    """Every row with ``low <= key < high`` once, ``batch_size`` at a time, in byte order of ``key``.

    ``page(filter, limit)`` runs one query. Pages are ranged by key (``key > last``):
    `iterator`/`reduce_stop_for_best` are what pymilvus' own query_iterator sends to
    get pages sorted by key, but its cursor is not escaped, so ids holding `"` or `\\`
    would break it. ``short_page_ends``: a page shorter than its limit is the last
    (milvus-lite answers exactly ``min(limit, matches)``; pymilvus' iterator, not
    trusting a server to, asks until a page is empty, a query more).
    """
    if not 1 <= batch_size <= max_page:
        raise ValueError(f"batch_size must be between 1 and {max_page} (Milvus' limit), got {batch_size}")
    upper = "" if high is None else f" and {key} < {literal(high)}"
    lo, hi = (low or "").encode(), None if high is None else high.encode()
    last: str | None = None
    while True:
        if last is not None:
            filter_ = f"{key} > {literal(last)}{upper}"
        elif low is not None or high is not None:
            filter_ = f"{key} >= {literal(low or '')}{upper}"
        else:
            filter_ = ""
        rows = page(filter_, batch_size)
        if not rows:
            return
        keys = [row[key].encode() for row in rows]
        if keys != sorted(keys) or (last is not None and keys[0] <= last.encode()):
            raise StoreError("milvus", f"{what}: the server returned a page out of key order")
        if keys[0] < lo or (hi is not None and keys[-1] >= hi):
            raise StoreError("milvus", f"{what}: the server returned ids outside {low!r}..{high!r}")
        yield rows
        if short_page_ends and len(rows) < batch_size:
            return
        last = rows[-1][key]
