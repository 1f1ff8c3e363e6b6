"""Run a seed: refuse or flush, then generate and write users batch by batch.

The command, tests and benchmarks call :func:`run_seed`. Stores that are
skipped are neither flushed, checked nor written. Any store failure surfaces as
``StoreError`` naming the store; a refusal (data already there, bad options) as
``SeedError``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.db import Error as DatabaseError
from django.utils import timezone

from consistency.conf import app_settings
from consistency.seed import cache as cache_side
from consistency.seed import sql
from consistency.seed.generate import AUTO_ID_MODELS, SEEDED_MODELS, Batch, Generator
from consistency.stores.errors import StoreError


class SeedError(Exception):
    """The seed refuses to run (options or the stores' state)."""


@dataclass(frozen=True)
class SeedOptions:
    """What to seed: ``users`` users from ``seed``, ``batch_size`` users per round."""

    users: int
    seed: int = 0
    batch_size: int = 5_000
    cache: bool = True
    analytics: bool = True
    vectors: bool = True
    flush: bool = False

    def __post_init__(self) -> None:
        if self.users < 1:
            raise SeedError(f"--users must be at least 1, got {self.users}")
        if self.batch_size < 1:
            raise SeedError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class SeedReport:
    """Rows written per (store, table), and how long it took."""

    written: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.written.values())


DB_STORE = {"auth": "auth database", "default": "backend database"}


def _client_errors(store: str) -> tuple[type[BaseException], ...]:
    """The exceptions a store's client raises when the store fails (not our bugs)."""
    if store == "cache":
        from django_redis.exceptions import ConnectionInterrupted
        from redis.exceptions import RedisError

        return (ConnectionInterrupted, RedisError, OSError)
    if store == "milvus":
        from pymilvus.exceptions import MilvusException

        return (MilvusException, OSError)
    return (DatabaseError,)


@contextmanager
def store_errors(store: str) -> Iterator[None]:
    """Turn the store client's failures inside into ``StoreError(store, ...)``."""
    try:
        yield
    except _client_errors(store) as exc:
        raise StoreError(store, f"{type(exc).__name__}: {exc}") from exc


class _Stores:
    """The analytics and vector stores the options ask for, opened and pinged."""

    def __init__(self, options: SeedOptions) -> None:
        self.analytics: Any = None
        self.vectors: Any = None
        if options.analytics:
            from consistency.stores.analytics import get_analytics
            from consistency.stores.analytics_schema import ensure_schema

            self.analytics = get_analytics()
            ensure_schema(self.analytics)  # the adapter raises StoreError itself
        if options.vectors:
            from consistency.stores.vectors import get_vectors

            with store_errors("milvus"):
                self.vectors = get_vectors()
                self.vectors.ensure_collection()


def _refuse_if_not_empty(stores: _Stores) -> None:
    held: dict[str, list[str]] = {}
    for model in SEEDED_MODELS:
        store = DB_STORE[sql.alias_for(model)]
        with store_errors(store):
            if sql.non_empty([model]):
                held.setdefault(store, []).append(model._meta.db_table)
    if stores.analytics is not None:
        from consistency.seed import analytics

        for table in ("message_events", "tool_usage_events"):
            if analytics.live_count(stores.analytics, table):
                held.setdefault(stores.analytics.kind, []).append(f"{stores.analytics.database}.{table}")
    if stores.vectors is not None and stores.vectors.count():
        held.setdefault("milvus", []).append(stores.vectors.collection)
    if held:
        where = "; ".join(f"{store}: {', '.join(tables)}" for store, tables in held.items())
        raise SeedError(
            f"the stores already hold data, and seeding again would collide on ids ({where}). "
            "Run `manage.py seed --flush` to empty them first."
        )


def _flush(options: SeedOptions, stores: _Stores) -> None:
    if options.cache:
        # Before the tables: the local-memory cache finds its keys through the rows.
        with store_errors("cache"):
            cache_side.clear()
    for alias in ("auth", "default"):
        with store_errors(DB_STORE[alias]):
            sql.flush(m for m in SEEDED_MODELS if sql.alias_for(m) == alias)
    if stores.analytics is not None:
        from consistency.seed import analytics

        with store_errors(stores.analytics.kind):
            analytics.flush(stores.analytics)
    if stores.vectors is not None:
        from consistency.seed import vectors

        with store_errors("milvus"):
            vectors.flush(stores.vectors)


def _write(
    batch: Batch, options: SeedOptions, stores: _Stores, rng: np.random.Generator, report: SeedReport
) -> None:
    for model in SEEDED_MODELS:
        alias = sql.alias_for(model)
        with store_errors(DB_STORE[alias]):
            count = sql.write_rows(model, batch.rows.get(model, []), options.batch_size)
        report.written[(DB_STORE[alias], model._meta.db_table)] += count
    if stores.analytics is not None:
        from consistency.seed import analytics

        with store_errors(stores.analytics.kind):
            for table, count in analytics.write_batch(
                stores.analytics, batch, options.batch_size * 10
            ).items():
                report.written[(stores.analytics.kind, table)] += count
    if stores.vectors is not None:
        from consistency.seed import vectors

        with store_errors("milvus"):
            count = vectors.write_batch(stores.vectors, batch, rng, int(app_settings.EMBEDDING_DIM))
        report.written[("milvus", stores.vectors.collection)] += count
    if options.cache:
        with store_errors("cache"):
            for prefix, count in cache_side.write_batch(batch).items():
                report.written[("cache", prefix + "*")] += count


def run_seed(options: SeedOptions, progress: Callable[[int], None] | None = None) -> SeedReport:
    """Seed every store the options name; ``progress`` is told how many users each round wrote."""
    started = time.perf_counter()
    stores = _Stores(options)
    if options.flush:
        _flush(options, stores)
    else:
        _refuse_if_not_empty(stores)
    generator = Generator(options.seed, timezone.now())
    rng = np.random.default_rng(options.seed)
    report = SeedReport()
    remaining = options.users
    while remaining:
        size = min(remaining, options.batch_size)
        _write(generator.batch(size), options, stores, rng, report)
        remaining -= size
        if progress is not None:
            progress(size)
    for alias in ("auth", "default"):
        with store_errors(DB_STORE[alias]):
            sql.reset_sequences(m for m in AUTO_ID_MODELS if sql.alias_for(m) == alias)
    report.seconds = time.perf_counter() - started
    return report
