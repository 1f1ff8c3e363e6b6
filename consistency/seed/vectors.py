"""Vector side of the seed: a random unit vector for every message's ``embedding_id``."""

from __future__ import annotations

import numpy as np

from consistency.backend.models import Message
from consistency.seed.generate import Batch
from consistency.stores.vectors import VectorStore


def unit_vectors(rng: np.random.Generator, count: int, dim: int) -> list[list[float]]:
    """``count`` random vectors of length 1 in ``dim`` dimensions."""
    matrix = rng.standard_normal((count, dim), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix.tolist()


def write_batch(store: VectorStore, batch: Batch, rng: np.random.Generator, dim: int) -> int:
    """Upsert a vector for each message in ``batch``; returns the count written."""
    messages = [row for row in batch.rows.get(Message, []) if row["embedding_id"]]
    if not messages:
        return 0
    vectors = unit_vectors(rng, len(messages), dim)
    rows = [
        {"embedding_id": row["embedding_id"], "message_id": row["id"], "vector": vector}
        for row, vector in zip(messages, vectors, strict=True)
    ]
    return store.upsert(rows)


def flush(store: VectorStore) -> None:
    """Drop the collection and create it empty."""
    store.drop()
    store.ensure_collection()
