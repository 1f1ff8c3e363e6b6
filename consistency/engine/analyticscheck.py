"""Analytics row parity: backend rows against the latest live version of their events.

1. One pass per side, both sides at once: (count, sum of fingerprints mod 2^64)
   per key range (``analyticsranges``: a key prefix or ``id div width``, sized
   from the source for about 1,000 rows a range); ClickHouse computes it over
   ``latest_rows_sql`` (FINAL, ``deleted = 0``), PostgreSQL in SQL too
   (``EventSpec.pg_select``; other databases stream rows and hash them in Python).
2. Only the differing ranges are read again, as (id, fingerprint) pairs: a
   primary-key range read on both sides (PREWHERE on ClickHouse's ``ORDER BY
   id``, index ranges on PostgreSQL), not a second pass over the table.
3. Candidates are re-read by id after the settle delay and confirmed.
Repair re-exports missing or changed rows with a higher version and writes a
delete (``deleted = 1``, higher version) for extra events; each is a no-op when
the event already agrees, so repairs are idempotent.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.db import connections, transaction

from consistency.engine import analyticsranges as ranges
from consistency.engine.analyticsfp import MASK, SPECS, EventSpec, render
from consistency.engine.declarations import Declaration, DeclarationError, Repair
from consistency.engine.findings import Action, AuditContext, Finding
from consistency.stores.analytics import AnalyticsStore, get_analytics
from consistency.stores.analytics_schema import latest_rows_sql
from consistency.stores.analytics_sql import sql_literal


def in_list(values: Sequence[Any]) -> str:
    """``(a, b)`` for an IN clause; no trailing comma for one value (18.16 refuses it)."""
    return "(" + ", ".join(sql_literal(v) for v in values) + ")"


def _chunks(items: Sequence[Any], size: int = 1000) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class EventSide:
    """The ClickHouse side of one event table."""

    def __init__(self, store: AnalyticsStore, spec: EventSpec) -> None:
        self.store, self.spec = store, spec

    def _latest(self, key_where: str | None = None) -> str:
        return latest_rows_sql(
            self.spec.table, self.spec.columns, database=self.store.database, key_where=key_where
        )

    def buckets(self, buckets: ranges.Buckets) -> dict[Any, tuple[int, int]]:
        inner = f"SELECT {buckets.ch_sql()} AS b, {self.spec.fp_sql()} AS f FROM ({self._latest()})"
        rows = self.store.query(f"SELECT {buckets.ch_out('b')}, count(), sum(f) FROM ({inner}) GROUP BY b")
        return {buckets.decode(b): (int(n), int(s) & MASK) for b, n, s in rows}

    def fingerprints(self, buckets: ranges.Buckets, chosen: Sequence[Any]) -> dict[Any, int]:
        out: dict[Any, int] = {}
        for chunk in _chunks(list(chosen), ranges.MAX_RANGES):  # primary-key ranges: granules read
            latest = self._latest(ranges.ch_where(buckets, chunk))
            rows = self.store.query(f"SELECT id, {self.spec.fp_sql()} AS f FROM ({latest})")
            out.update({self.spec.key_of(i): int(f) for i, f in rows})
        return out

    def rows(self, ids: Sequence[Any]) -> dict[Any, tuple[Any, ...]]:
        out: dict[Any, tuple[Any, ...]] = {}
        for chunk in _chunks(list(ids)):
            for row in self.store.query(self._latest(f"id IN {in_list(chunk)}")):  # the key index
                out[self.spec.key_of(row[0])] = tuple(row)
        return out

    def max_version(self, key: Any) -> int:
        target = f"`{self.store.database}`.`{self.spec.table}`"
        found = self.store.query(f"SELECT max(version), count() FROM {target} WHERE id = {sql_literal(key)}")
        return int(found[0][0]) if found and found[0][1] else 0

    def write(self, event: Sequence[Any], version: int, deleted: bool) -> None:
        columns = (*self.spec.columns, "version", "deleted")
        self.store.insert(
            self.spec.table, columns, [(*event[: len(self.spec.columns)], version, int(deleted))]
        )


def _as_dict(spec: EventSpec, event: Sequence[Any] | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {
        c: (v.isoformat() if hasattr(v, "isoformat") else v)
        for c, v in zip(spec.columns, event, strict=False)
    }


@dataclass(frozen=True)
class AnalyticsRowParity(Declaration):
    """Every row of ``table``'s backend model has an equal live event, and no other event lives."""

    table: str = ""
    source_alias: str = "default"
    repair: Repair = Repair.SOURCE_WINS

    kind = "analytics"

    @property
    def store(self) -> str:
        return "clickhouse"

    @property
    def spec(self) -> EventSpec:
        try:
            return SPECS[self.table]
        except KeyError:
            raise DeclarationError(
                f"{self.name}: unknown event table {self.table!r}; known {sorted(SPECS)}"
            ) from None

    def validate(self) -> None:
        self.spec  # noqa: B018 - raises DeclarationError

    def _in_sql(self) -> bool:
        return connections[self.source_alias].vendor == "postgresql"

    def _source_buckets(
        self, buckets: ranges.Buckets, progress: Any
    ) -> tuple[dict[Any, tuple[int, int]], int]:
        if self._in_sql():
            bucket = buckets.pg_sql(self.spec.pg_key)
            inner = self.spec.pg_select("b", "f", bucket=bucket)
            sql = f"SELECT {buckets.pg_out('b')}, count(*), sum(f) FROM ({inner}) s GROUP BY b"
            with (
                transaction.atomic(using=self.source_alias),
                connections[self.source_alias].cursor() as cursor,
            ):
                # The planner cannot know the number of groups of an expression, expects one
                # a row and sorts 10M rows; a hash table of 10,000 groups fits in a few MB.
                # That estimate also inflates the cost past JIT's inlining and optimisation
                # thresholds, which then compile for seconds what the plain sum does not (at
                # 10M rows: 21.1 s instead of 22.5 s, the sum alone 22.8 s).
                cursor.execute("SET LOCAL enable_sort = off")
                cursor.execute("SET LOCAL work_mem = '64MB'")
                cursor.execute("SET LOCAL jit_inline_above_cost = -1")
                cursor.execute("SET LOCAL jit_optimize_above_cost = -1")
                cursor.execute(sql)
                rows = cursor.fetchall()
            total = sum(int(n) for _, n, _ in rows)
            if progress:
                progress(total)
            return {buckets.decode(b): (int(n), int(s) & MASK) for b, n, s in rows}, total
        acc: dict[Any, list[int]] = {}
        total = 0
        for event in self.spec.source_rows(self.source_alias):
            cell = acc.setdefault(buckets.of(event[0]), [0, 0])
            cell[0] += 1
            cell[1] = (cell[1] + self.spec.fingerprint(event)) & MASK
            total += 1
            if progress and total % 10000 == 0:
                progress(10000)
        return {b: (n, s) for b, (n, s) in acc.items()}, total

    def _ranged(self) -> bool:
        """Whether PostgreSQL's key index orders keys as ClickHouse does (range reads hold)."""
        if self.spec.integer_key:
            return True
        meta = self.spec.model._meta
        return ranges.byte_ordered(self.source_alias, meta.db_table, str(meta.pk.column))

    def _source_fingerprints(self, buckets: ranges.Buckets, chosen: Sequence[Any]) -> dict[Any, int]:
        if self._in_sql():
            where, params = ranges.pg_where(buckets, chosen, self.spec.pg_key, self._ranged())
            with connections[self.source_alias].cursor() as cursor:
                cursor.execute(self.spec.pg_select("id", "f", where=where), params)
                return {self.spec.key_of(i): int(f) for i, f in cursor.fetchall()}
        wanted = set(chosen)
        return {
            self.spec.key_of(e[0]): self.spec.fingerprint(e)
            for e in self.spec.source_rows(self.source_alias)
            if buckets.of(e[0]) in wanted
        }

    def classify(self, side: EventSide, keys: Iterable[Any]) -> dict[Any, Finding]:
        keys = list(keys)
        source = {self.spec.key_of(e[0]): e for e in self.spec.source_rows(self.source_alias, keys)}
        target = side.rows(keys)
        found: dict[Any, Finding] = {}
        for key in keys:
            fields: tuple[str, ...] = ()
            a, b = source.get(key), target.get(key)
            if a is None and b is None:
                continue
            if b is None:
                kind = "missing"
            elif a is None:
                kind = "extra"
            elif self.spec.fingerprint(a) == self.spec.fingerprint(b):
                continue
            else:
                kind = "mismatch"
                fields = tuple(
                    c for c, x, y in zip(self.spec.columns, a, b, strict=False) if render(x) != render(y)
                )
            found[key] = Finding(
                self.name,
                kind,
                str(key),
                fields,
                _as_dict(self.spec, a),
                _as_dict(self.spec, b),
                detail=f"{self.spec.table}: latest live event {kind}"
                + (f" in {', '.join(fields)}" if fields else ""),
            )
        return found

    def audit(self, ctx: AuditContext) -> tuple[list[Finding], dict[str, Any]]:
        side = EventSide(get_analytics(), self.spec)
        clock = [time.perf_counter()]
        buckets = ranges.choose(self.spec.model, self.source_alias, self.spec.integer_key)
        sides: dict[str, float] = {}

        def timed(name: str, fn: Any, *args: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                sides[name] = round(time.perf_counter() - start, 2)

        with ThreadPoolExecutor(max_workers=1) as pool:
            # ClickHouse works in its own thread while this one reads the database.
            clock.append(time.perf_counter())
            target_future = pool.submit(timed, "clickhouse", side.buckets, buckets)
            source, compared = timed("source", self._source_buckets, buckets, ctx.progress)
            target = target_future.result()
            clock.append(time.perf_counter())
            differing = sorted(b for b in set(source) | set(target) if source.get(b) != target.get(b))
            candidates: set[Any] = set()
            if differing:
                theirs_future = pool.submit(timed, "drill_clickhouse", side.fingerprints, buckets, differing)
                ours = timed("drill_source", self._source_fingerprints, buckets, differing)
                theirs = theirs_future.result()
                candidates = {k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k)}
            clock.append(time.perf_counter())
        first = self.classify(side, candidates) if candidates else {}
        if first and ctx.settle:
            time.sleep(ctx.settle)
        again = self.classify(side, first) if first else {}
        confirmed = [f for k, f in again.items() if first[k].kind == f.kind]
        clock.append(time.perf_counter())
        figures = {
            "compared": compared,
            "seconds": {  # time of each phase (none after buckets when nothing differs)
                phase: round(b - a, 2)
                for phase, (a, b) in zip(
                    ("sizing", "buckets", "drill_down", "confirm"), itertools.pairwise(clock), strict=False
                )
            },
            "side_seconds": sides,  # each side's first pass and drill-down, run at the same time
            "buckets": buckets.describe(),
            "bucket_count": len(set(source) | set(target)),
            "segments": len(differing),
            "candidates": len(candidates),
            "in_flight": len(first) - len(confirmed),
            "target_rows": sum(n for n, _ in target.values()),
        }
        return sorted(confirmed, key=lambda f: f.key), figures

    def plan_repair(self, findings: Sequence[Finding]) -> list[Action]:
        verbs = {"missing": "insert", "mismatch": "update", "extra": "delete"}
        return [
            Action(self.name, f.kind, f.key, verbs[f.kind], self.spec.table, "analytics")
            for f in findings
            if f.kind in verbs
        ]

    def apply_repair(self, action: Action) -> str:
        side = EventSide(get_analytics(), self.spec)
        key = self.spec.key_of(action.key)
        source = next(iter(self.spec.source_rows(self.source_alias, [key])), None)
        live = side.rows([key]).get(key)
        if source is not None:
            if live is not None and self.spec.fingerprint(live) == self.spec.fingerprint(source):
                return "already in sync"
            version = side.max_version(key) + 1
            side.write(source, version, deleted=False)
            return f"exported version {version}"
        if live is None:
            return "already deleted"
        version = side.max_version(key) + 1
        side.write(live[: len(self.spec.columns)], version, deleted=True)
        return f"wrote delete version {version}"

    def verify_repair(self, action: Action) -> bool:
        side = EventSide(get_analytics(), self.spec)
        return not self.classify(side, [self.spec.key_of(action.key)])

    def transaction_alias(self, action: Action) -> str | None:
        return None
