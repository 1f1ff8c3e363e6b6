"""The vector store: message embeddings in Milvus, through pymilvus' MilvusClient.

``uri`` is a server URL (``http://host:19530``) or a milvus-lite ``.db`` path,
which pymilvus serves in-process through the milvus_lite package. Reads use
Strong consistency, so an audit sees every write that returned before it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from project.env import redact_url

from .cached import CachedStore
from .errors import StoreError
from .milvus import GRPC_OPTIONS, MAX_PAGE, chunks, key_ordered_pages, literal, pymilvus

PRIMARY_KEY = "embedding_id"
MAX_ID_BYTES = 64
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_BATCH = 1000


class VectorStore:
    """One Milvus collection of ``embedding_id`` -> (``message_id``, ``vector``)."""

    kind = "milvus"

    #: Loading a collection rebuilds its index in memory (in milvus-lite, in Python):
    #: minutes on a loaded machine, where a request takes milliseconds.
    LOAD_TIMEOUT = 180.0

    def __init__(self, uri: str, collection: str, dim: int, *, timeout: float = 30) -> None:
        if not _NAME.match(collection):
            raise ValueError(f"Milvus collection name {collection!r} must be letters, digits and underscores")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"embedding dimension must be a positive int, got {dim!r}")
        if "://" not in uri and not uri.endswith(".db"):
            raise ValueError(
                f"Milvus URI {uri!r} must be http(s)://host:port or a milvus-lite path ending in .db"
            )
        self.uri = uri
        self.collection = collection
        self.dim = dim
        self.timeout = timeout
        self._client: Any = None
        self._loaded = False
        self._lite: bool | None = None
        self._lock = threading.Lock()

    def _fail(self, action: str, exc: BaseException) -> StoreError:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        return StoreError(
            self.kind, f"{action} {self.collection} at {redact_url(self.uri)} failed: {message}"
        )

    def _connect(self) -> Any:
        with self._lock:
            if self._client is None:
                if "://" not in self.uri:
                    Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
                try:
                    self._client = pymilvus().MilvusClient(
                        self.uri, timeout=self.timeout, grpc_options=GRPC_OPTIONS
                    )
                except Exception as exc:
                    raise self._fail("connect for", exc) from exc
            return self._client

    def _call(self, action: str, method: str, *args: Any, **kwargs: Any) -> Any:
        client = self._connect()
        if method == "query" and not self._loaded:
            # A collection is 'released' in a new process (a milvus-lite file always
            # is) until loaded; loading a loaded collection changes nothing.
            self._call(
                "load", "load_collection", self.collection, timeout=max(self.timeout, self.LOAD_TIMEOUT)
            )
            self._loaded = True
        kwargs.setdefault("timeout", self.timeout)
        try:
            return getattr(client, method)(*args, **kwargs)
        except StoreError:
            raise
        except Exception as exc:
            raise self._fail(action, exc) from exc

    def ensure_collection(self) -> bool:
        """Create and load the collection if missing; True if created, False if it existed."""
        module = pymilvus()
        if self._call("look up", "has_collection", self.collection):
            found = self.dimension()
            if found != self.dim:
                raise StoreError(
                    self.kind,
                    f"collection {self.collection} has vectors of dimension {found}, expected {self.dim} "
                    "(EMBEDDING_DIM); drop it or fix the setting",
                )
            self._call(
                "load", "load_collection", self.collection, timeout=max(self.timeout, self.LOAD_TIMEOUT)
            )
            return False
        kinds = module.DataType
        schema = module.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(PRIMARY_KEY, kinds.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field("message_id", kinds.VARCHAR, max_length=MAX_ID_BYTES)
        schema.add_field("vector", kinds.FLOAT_VECTOR, dim=self.dim)
        # A collection without a vector index cannot be loaded, hence not queried.
        index = self._connect().prepare_index_params()
        index.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="COSINE")
        self._call(
            "create",
            "create_collection",
            self.collection,
            schema=schema,
            index_params=index,
            consistency_level="Strong",
        )
        return True

    def exists(self) -> bool:
        """True when the collection exists."""
        return bool(self._call("look up", "has_collection", self.collection))

    def dimension(self) -> int:
        """The dimension of the existing collection's vector field."""
        described = self._call("describe", "describe_collection", self.collection)
        for field in described.get("fields", []):
            if field.get("name") == "vector":
                return int(field["params"]["dim"])
        raise StoreError(self.kind, f"collection {self.collection} has no `vector` field")

    def upsert(self, rows: Iterable[dict[str, Any]], batch_size: int = _BATCH) -> int:
        """Insert or replace rows (``embedding_id``, ``message_id``, ``vector``); return the count."""
        total = 0
        for chunk in chunks(rows, batch_size):
            data = [self._checked(row) for row in chunk]
            result = self._call("upsert into", "upsert", self.collection, data)
            total += int(result.get("upsert_count", len(data)))
        return total

    def _checked(self, row: dict[str, Any]) -> dict[str, Any]:
        missing = {PRIMARY_KEY, "message_id", "vector"} - set(row)
        if missing:
            raise ValueError(f"vector row {row.get(PRIMARY_KEY)!r} lacks {', '.join(sorted(missing))}")
        vector = [float(x) for x in row["vector"]]
        if len(vector) != self.dim:
            raise ValueError(
                f"vector row {row[PRIMARY_KEY]!r} has dimension {len(vector)}, expected {self.dim}"
            )
        keys = {PRIMARY_KEY: str(row[PRIMARY_KEY]), "message_id": str(row["message_id"])}
        for field, value in keys.items():
            if len(value.encode()) > MAX_ID_BYTES:
                raise ValueError(f"{field} {value!r} is longer than {MAX_ID_BYTES} bytes")
        return {**keys, "vector": vector}

    def _ids_filter(self, ids: Sequence[str]) -> str:
        return f"{PRIMARY_KEY} in [{', '.join(literal(i) for i in ids)}]"

    def get(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The rows for ``ids`` that exist, as dicts with a list-of-float ``vector``."""
        found: list[dict[str, Any]] = []
        for chunk in chunks(ids, _BATCH):
            rows = self._call(
                "read from",
                "query",
                self.collection,
                filter=self._ids_filter(chunk),
                output_fields=[PRIMARY_KEY, "message_id", "vector"],
                consistency_level="Strong",
            )
            found.extend(
                {
                    PRIMARY_KEY: r[PRIMARY_KEY],
                    "message_id": r["message_id"],
                    "vector": [float(x) for x in r["vector"]],
                }
                for r in rows
            )
        return found

    def delete(self, ids: Sequence[str]) -> int:
        """Delete ``ids``; return how many existed (Milvus itself echoes every id asked for)."""
        deleted = 0
        for chunk in chunks(ids, _BATCH):
            present = [
                r[PRIMARY_KEY]
                for r in self._call(
                    "read from",
                    "query",
                    self.collection,
                    filter=self._ids_filter(chunk),
                    output_fields=[PRIMARY_KEY],
                    consistency_level="Strong",
                )
            ]
            if present:
                self._call("delete from", "delete", self.collection, filter=self._ids_filter(present))
                deleted += len(present)
        return deleted

    def count(self) -> int:
        """Live rows in the collection (deletes counted, unlike the collection statistics)."""
        rows = self._call(
            "count",
            "query",
            self.collection,
            filter="",
            output_fields=["count(*)"],
            consistency_level="Strong",
        )
        return int(rows[0]["count(*)"])

    def iter_ids(self, batch_size: int = 5000) -> Iterator[list[tuple[str, str]]]:
        """Yield every (embedding_id, message_id) once, ``batch_size`` at a time, in key order."""

        def page(filter_: str, limit: int) -> list[dict[str, Any]]:
            return self._id_page("iterate over", filter_, limit)

        for rows in key_ordered_pages(page, PRIMARY_KEY, batch_size, f"{self.kind}: {self.collection}"):
            yield [(r[PRIMARY_KEY], r["message_id"]) for r in rows]

    def _id_page(self, verb: str, filter_: str, limit: int) -> list[dict[str, Any]]:
        """One page of (embedding_id, message_id) rows in key order (``iterator`` with
        ``reduce_stop_for_best``), read consistently; ``verb`` names the action in errors."""
        return list(
            self._call(
                verb,
                "query",
                self.collection,
                filter=filter_,
                output_fields=[PRIMARY_KEY, "message_id"],
                limit=limit,
                iterator="True",
                reduce_stop_for_best="True",
                consistency_level="Strong",
            )
        )

    def is_lite(self) -> bool:
        """True when the server is milvus-lite (its version string says so)."""
        if self._lite is None:
            version = str(self._call("ask the version of", "get_server_version"))
            self._lite = version.startswith(("milvus_lite", "milvus-lite"))
        return self._lite

    def pages_between(
        self, low: str | None, high: str | None, page_rows: int
    ) -> Iterator[list[tuple[str, str]]]:
        """Every (embedding_id, message_id) with ``low <= embedding_id < high``, in byte order.

        Pages of at most ``page_rows`` (16,384 on a Milvus server, its largest limit), so
        memory is bounded however many ids a range holds: a server answers each page from
        its key index, and milvus-lite, which makes a pass over the collection for any
        query, makes one pass for a range of up to ``page_rows`` ids and ends on a short page.
        """
        lite = self.is_lite()

        def page(filter_: str, limit: int) -> list[dict[str, Any]]:
            return self._id_page("read from", filter_, limit)

        size = page_rows if lite else min(page_rows, MAX_PAGE)
        what = f"{self.kind}: {self.collection}"
        pages = key_ordered_pages(
            page,
            PRIMARY_KEY,
            size,
            what,
            low=low,
            high=high,
            max_page=size if lite else MAX_PAGE,
            short_page_ends=lite,
        )
        for rows in pages:
            yield [(r[PRIMARY_KEY], r["message_id"]) for r in rows]

    def ids_between(
        self, low: str | None, high: str | None, page_rows: int = MAX_PAGE
    ) -> list[tuple[str, str]]:
        """Every (embedding_id, message_id) of ``pages_between``, as one list."""
        return [row for rows in self.pages_between(low, high, page_rows) for row in rows]

    def drop(self) -> None:
        """Drop the collection if it exists (tests and rebuilds)."""
        if self._call("look up", "has_collection", self.collection):
            self._call("drop", "drop_collection", self.collection)
        self._loaded = False

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _vectors_key() -> tuple[str, str, int]:
    from django.conf import settings

    from consistency.conf import app_settings

    return settings.MILVUS_URI, app_settings.MILVUS_COLLECTION, app_settings.EMBEDDING_DIM


_stores: CachedStore[VectorStore] = CachedStore(_vectors_key, VectorStore, ("MILVUS_URI", "CONSISTENCY"))


def get_vectors() -> VectorStore:
    """The process-wide store for MILVUS_URI and the CONSISTENCY collection settings."""
    return _stores.get()


def close_vectors() -> None:
    """Close and forget the cached store; the next get_vectors() builds a new one."""
    _stores.close()
