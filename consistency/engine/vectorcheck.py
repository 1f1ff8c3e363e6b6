"""Vector reference parity: messages' ``embedding_id`` against Milvus' ``message_embeddings``.

Both sides are read once, in the same byte order of ids, and merged one key
range at a time: the database streams embedding ids sorted with the ``C``/
``BINARY`` collation, every ``range_rows`` of them close a range, and Milvus is
asked for that range's ids in key order, at most ``page_rows`` a query (one query
a range unless Milvus holds many more ids there than the database). Then: a
message whose vector is missing (``missing``), a vector no message names
(``orphan``), a vector whose ``message_id`` is another message (``mismatch``). A
collection of the wrong dimension or a missing collection is an ``invariant``
finding, not a crash. Candidates are re-read after settling.
Repair: delete orphan vectors; a message with a missing vector is marked for
re-embedding by setting its ``embedding_id`` to NULL (the model has no flag).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models.functions import Collate

from consistency.backend.models import Message
from consistency.engine.declarations import Declaration, Repair
from consistency.engine.findings import Action, AuditContext, Finding
from consistency.stores.vectors import VectorStore, get_vectors


def _message_ids(alias: str, batch: int) -> Iterator[tuple[str, str]]:
    """(embedding_id, message id) of every message with a vector, in byte order of embedding_id."""
    collation = "C" if connections[alias].vendor == "postgresql" else "BINARY"
    qs = (
        Message._default_manager.using(alias)
        .filter(embedding_id__isnull=False)
        .annotate(sort_key=Collate("embedding_id", collation))
        .order_by("sort_key")
        .values_list("embedding_id", "id")
    )
    for embedding_id, message_id in qs.iterator(chunk_size=batch):
        yield str(embedding_id), message_id


def _ranges(
    ours: Iterator[tuple[str, str]], store: VectorStore, size: int, page_rows: int
) -> Iterator[tuple[list[tuple[str, str]], Iterator[tuple[str, str]]]]:
    """(database ids, Milvus ids) of consecutive key ranges covering every key, each sorted.

    A range ends before the database id that follows ``size`` of them, so the ranges
    partition the whole key space and each side holds exactly its keys of the range.
    Milvus' side is read lazily, ``page_rows`` at a time: a range may hold any number of
    ids only Milvus has (a database without embeddings against a full collection).
    """
    pending = next(ours, None)
    low: str | None = None
    while True:
        chunk: list[tuple[str, str]] = []
        while pending is not None and len(chunk) < size:
            chunk.append(pending)
            pending = next(ours, None)
        high = None if pending is None else pending[0]
        yield chunk, itertools.chain.from_iterable(store.pages_between(low, high, page_rows))
        if high is None:
            return
        low = high


@dataclass(frozen=True)
class VectorParity(Declaration):
    """Every message's embedding_id has a vector, and every vector belongs to its message."""

    alias: str = "default"
    batch_size: int = 16384  # rows a database fetch
    #: Database ids a Milvus range query: milvus-lite makes one pass over the collection a query.
    range_rows: int = 250_000
    #: Milvus ids a query at most (a Milvus server's cap, 16,384, applies below it): bounds
    #: memory, and is above range_rows so that a range takes one query (one pass) unless
    #: Milvus holds far more ids in it than the database.
    page_rows: int = 300_000
    repair: Repair = Repair.DELETE_ORPHAN

    kind = "vectors"

    @property
    def store(self) -> str:
        return "milvus"

    def validate(self) -> None:
        return None

    def _schema_findings(self, store: VectorStore) -> list[Finding]:
        if not store.exists():
            return [
                Finding(
                    self.name,
                    "invariant",
                    store.collection,
                    detail=f"collection {store.collection} does not exist",
                )
            ]
        found = store.dimension()
        if found != store.dim:
            detail = f"collection {store.collection} holds vectors of dimension {found}, expected {store.dim} (EMBEDDING_DIM)"
            return [Finding(self.name, "invariant", store.collection, detail=detail)]
        return []

    def _merge(self, store: VectorStore) -> tuple[int, dict[str, str]]:
        """Candidates by embedding_id -> kind, from one ordered pass over each side."""
        compared, found = 0, dict[str, str]()
        ranges = _ranges(_message_ids(self.alias, self.batch_size), store, self.range_rows, self.page_rows)
        for chunk, vectors in ranges:
            compared += self._merge_range(iter(chunk), vectors, found)
        return compared, found

    @staticmethod
    def _merge_range(
        ours: Iterator[tuple[str, str]], theirs: Iterator[tuple[str, str]], found: dict[str, str]
    ) -> int:
        a, b = next(ours, None), next(theirs, None)
        compared = 0
        while a is not None or b is not None:
            compared += 1
            if b is None or (a is not None and a[0].encode() < b[0].encode()):
                assert a is not None
                found[a[0]] = "missing"
                a = next(ours, None)
            elif a is None or b[0].encode() < a[0].encode():
                found[b[0]] = "orphan"
                b = next(theirs, None)
            else:
                if a[1] != b[1]:
                    found[a[0]] = "mismatch"
                a, b = next(ours, None), next(theirs, None)
        return compared

    def classify(self, store: VectorStore, ids: Sequence[str]) -> dict[str, Finding]:
        ids = list(ids)
        messages = dict(
            Message._default_manager.using(self.alias)
            .filter(embedding_id__in=ids)
            .values_list("embedding_id", "id")
        )
        vectors = {v["embedding_id"]: v["message_id"] for v in store.get(ids)} if ids else {}
        out: dict[str, Finding] = {}
        for key in ids:
            message, owner = messages.get(key), vectors.get(key)
            if message is not None and owner is None:
                out[key] = Finding(
                    self.name,
                    "missing",
                    key,
                    source={"message_id": message},
                    detail=f"message {message} has no vector {key}",
                )
            elif message is None and owner is not None:
                out[key] = Finding(
                    self.name,
                    "orphan",
                    key,
                    target={"message_id": owner},
                    detail=f"vector {key} names message {owner}, which has no such embedding_id",
                )
            elif message is not None and message != owner:
                out[key] = Finding(
                    self.name,
                    "mismatch",
                    key,
                    ("message_id",),
                    {"message_id": message},
                    {"message_id": owner},
                    detail=f"vector {key} belongs to message {owner}, but message {message} holds its id",
                )
        return out

    def audit(self, ctx: AuditContext) -> tuple[list[Finding], dict[str, Any]]:
        store = get_vectors()
        schema = self._schema_findings(store)
        if schema and "does not exist" in schema[0].detail:
            return schema, {"compared": 0}
        compared, candidates = self._merge(store)
        if candidates and ctx.settle:
            time.sleep(ctx.settle)
        again = self.classify(store, sorted(candidates)) if candidates else {}
        confirmed = [f for k, f in again.items() if candidates[k] == f.kind]
        figures = {
            "compared": compared,
            "candidates": len(candidates),
            "in_flight": len(candidates) - len(confirmed),
        }
        return schema + sorted(confirmed, key=lambda f: f.key), figures

    def plan_repair(self, findings: Sequence[Finding]) -> list[Action]:
        actions = []
        for f in findings:
            if f.kind == "orphan":
                actions.append(Action(self.name, f.kind, f.key, "delete", get_vectors().collection, "milvus"))
            elif f.kind == "missing":
                changes = {"embedding_id": None}
                actions.append(
                    Action(self.name, f.kind, f.key, "detach", Message._meta.db_table, self.alias, changes)
                )
        return actions

    def apply_repair(self, action: Action) -> str:
        if action.action == "delete":
            if Message._default_manager.using(self.alias).filter(embedding_id=action.key).exists():
                return "a message holds this id now; kept"
            return f"deleted {get_vectors().delete([action.key])} vector(s)"
        if get_vectors().get([action.key]):
            return "the vector exists now; kept"
        updated = (
            Message._default_manager.using(self.alias)
            .filter(embedding_id=action.key)
            .update(embedding_id=None)
        )
        return f"marked {updated} message(s) for re-embedding (embedding_id set to NULL)"

    def verify_repair(self, action: Action) -> bool:
        return not self.classify(get_vectors(), [action.key])

    def transaction_alias(self, action: Action) -> str | None:
        return self.alias if action.action == "detach" else None
