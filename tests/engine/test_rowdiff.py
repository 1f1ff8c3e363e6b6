"""Row parity on real databases: every drift kind, every key type, edges, concurrency."""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from django.db import connections
from django.test import override_settings

from consistency.engine import rangecache, rowside
from consistency.engine.declarations import RowParity, Side, bind_row_parity
from consistency.engine.normalizers import Decimal as DecimalN
from consistency.engine.normalizers import Email, Text, Timestamp
from consistency.engine.rowdiff import diff_rows
from tests.engine.conftest import flush_stats, shape
from tests.testapp.models import CompositeRow, IntRow, Shape, StrRow, UuidRow

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "auth"]), pytest.mark.sqlite]

FIELDS = ("name", "email", "amount", "active", "at", "data", "token_hash")


def key_of(model: type, i: int) -> dict[str, Any]:
    if model is IntRow:
        return {"id": i}
    if model is StrRow:
        return {"id": f"k{i:05d}"}
    if model is UuidRow:
        return {"id": uuid.UUID(int=i + 1)}
    return {"region": ("eu", "us")[i % 2], "code": i}


def key_text(model: type, i: int) -> str:
    values = key_of(model, i)
    return "\x1f".join(str(v) for v in values.values())


def declare(model: type, **extra: Any) -> RowParity:
    options: dict[str, Any] = {
        "name": f"t_{model.__name__}",
        "source": Side(f"testapp.{model.__name__}", alias="auth"),
        "target": Side(f"testapp.{model.__name__}", alias="default"),
        "key": ("region", "code") if model is CompositeRow else ("id",),
        "fields": FIELDS,
        "secret": ("token_hash",),
        "updated_at": ("updated_at", "updated_at"),
    }
    options.update(extra)
    return RowParity(**options)


def fill(model: type[Shape], alias: str, ids: range | list[int], **overrides: Any) -> None:
    rows = [model(**key_of(model, i), **shape(i, **overrides)) for i in ids]
    model._default_manager.using(alias).bulk_create(rows, batch_size=1000)


def audit(decl: RowParity, settle: float = 0.0, **kw: Any) -> tuple[list[Any], Any]:
    started = dt.datetime.now(dt.UTC)
    return diff_rows(bind_row_parity(decl), started_at=started, settle=settle, **kw)


def kinds(findings: list[Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in findings:
        out.setdefault(f.kind, set()).add(f.key)
    return out


@pytest.mark.parametrize("model", [IntRow, StrRow, UuidRow, CompositeRow])
def test_row_parity__finds_each_kind_for_each_key_type(tables: None, model: type[Shape]) -> None:
    fill(model, "auth", range(1, 501))
    fill(model, "default", [i for i in range(1, 501) if i not in (1, 250)])  # 1 and 250 missing
    fill(model, "default", [501, 777])  # extra
    model._default_manager.using("default").filter(**key_of(model, 499)).update(name="changed")
    model._default_manager.using("default").filter(**key_of(model, 500)).update(
        amount=Decimal("9.99"), active=False
    )

    findings, stats = audit(declare(model))

    assert kinds(findings) == {
        "missing": {key_text(model, 1), key_text(model, 250)},
        "extra": {key_text(model, 501), key_text(model, 777)},
        "mismatch": {key_text(model, 499), key_text(model, 500)},
    }
    by_key = {f.key: f for f in findings}
    assert by_key[key_text(model, 499)].fields == ("name",)
    assert by_key[key_text(model, 500)].fields == ("amount", "active")
    assert (stats.source_rows, stats.target_rows) == (500, 500)


@pytest.mark.parametrize("model", [IntRow, StrRow])
def test_row_parity__identical_tables_have_no_drift(tables: None, model: type) -> None:
    fill(model, "auth", range(1, 2001))
    fill(model, "default", range(1, 2001))
    findings, stats = audit(declare(model))
    assert findings == []
    assert (stats.source_rows, stats.target_rows, stats.rows_fetched) == (2000, 2000, 0)


def test_row_parity__empty_tables(tables: None) -> None:
    findings, stats = audit(declare(IntRow))
    assert (findings, stats.compared) == ([], 0)


def test_row_parity__one_side_empty(tables: None) -> None:
    fill(StrRow, "auth", range(1, 41))
    findings, _ = audit(declare(StrRow))
    assert Counter(f.kind for f in findings) == {"missing": 40}
    StrRow.objects.using("auth").all().delete()
    fill(StrRow, "default", range(1, 31))
    findings, _ = audit(declare(StrRow))
    assert Counter(f.kind for f in findings) == {"extra": 30}


def test_row_parity__drift_at_first_and_last_key(tables: None) -> None:
    fill(IntRow, "auth", range(1, 1001))
    fill(IntRow, "default", range(1, 1001))
    IntRow.objects.using("default").filter(id__in=[1, 1000]).update(name="x")
    findings, _ = audit(declare(IntRow))
    assert sorted(f.key for f in findings) == ["1", "1000"]


def test_row_parity__large_drift_is_decoded_in_partitions(tables: None) -> None:
    fill(IntRow, "auth", range(1, 3001))
    fill(IntRow, "default", range(1, 3001), name="all different")
    with override_settings(CONSISTENCY={"IBLT_MIN_CELLS": 64, "SETTLE_SECONDS": 0}):
        findings, stats = audit(declare(IntRow))
    assert len(findings) == 3000
    assert {f.kind for f in findings} == {"mismatch"}
    assert stats.segments > 1


def test_row_parity__scan_shared_by_several_connections_on_one_snapshot(
    tables: None, parallel_scans: None
) -> None:
    fill(StrRow, "auth", range(1, 2001))
    fill(StrRow, "default", [i for i in range(1, 2001) if i not in (1, 1500)])
    fill(StrRow, "default", [2001])
    StrRow.objects.using("default").filter(**key_of(StrRow, 2000)).update(name="changed")

    findings, stats = audit(declare(StrRow))

    assert stats.extra["connections"] > 2  # more than one connection per side read the table
    assert kinds(findings) == {
        "missing": {key_text(StrRow, 1), key_text(StrRow, 1500)},
        "extra": {key_text(StrRow, 2001)},
        "mismatch": {key_text(StrRow, 2000)},
    }
    assert (stats.source_rows, stats.target_rows, stats.rows_fetched) == (2000, 1999, 5)


def test_row_parity__secret_field_difference_is_found_but_never_shown(tables: None) -> None:
    fill(IntRow, "auth", range(1, 11))
    fill(IntRow, "default", range(1, 11))
    IntRow.objects.using("default").filter(id=5).update(token_hash="planted-secret-value")
    findings, _ = audit(declare(IntRow))
    assert [(f.key, f.fields) for f in findings] == [("5", ("token_hash",))]
    assert "planted-secret-value" not in repr(findings)
    assert "secret-token-5" not in repr(findings)
    assert findings[0].source["token_hash"] == "<redacted>"


def test_row_parity__normalisers_hide_representation_only_differences(tables: None) -> None:
    fill(IntRow, "auth", range(1, 6))
    fill(IntRow, "default", range(1, 6))
    db = IntRow.objects.using("default")
    db.filter(id=1).update(name=None)  # NULL on one side, '' on the other
    IntRow.objects.using("auth").filter(id=1).update(name="")
    db.filter(id=2).update(email="USER2@Example.IO ")  # email case and blanks
    at3 = shape(3)["at"]
    assert isinstance(at3, dt.datetime)
    db.filter(id=3).update(at=at3 + dt.timedelta(microseconds=400))  # below ms precision
    db.filter(id=4).update(data={"tags": ["a", "b"], "nested": {"y": [1, 2], "x": 1}, "i": 4})  # key order
    IntRow.objects.using("auth").filter(id=5).update(amount=Decimal("1.25"))
    db.filter(id=5).update(amount=Decimal("1.30"))  # equal at one decimal place

    decl = declare(
        IntRow, normalizers={"email": Email(), "at": Timestamp("ms"), "amount": DecimalN(places=1)}
    )
    findings, _ = audit(decl)
    assert findings == []
    # The same differences are drift when the normaliser is stricter.
    strict = declare(
        IntRow, normalizers={"name": Text(null_is_empty=False), "email": Text(), "at": Timestamp("us")}
    )
    findings, _ = audit(strict)
    assert kinds(findings) == {"mismatch": {"1", "2", "3", "5"}}


def test_row_parity__unicode_normalisation(tables: None) -> None:
    if connections["auth"].vendor != "postgresql" or connections["default"].vendor != "postgresql":
        pytest.skip("NFC in SQL needs PostgreSQL; the Python rendering is covered in test_normalizers")
    fill(IntRow, "auth", [1], name="caf\u00e9")
    fill(IntRow, "default", [1], name="cafe\u0301")
    assert [f.key for f in audit(declare(IntRow))[0]] == ["1"]
    assert audit(declare(IntRow, normalizers={"name": Text(unicode="NFC")}))[0] == []


def test_row_parity__change_during_settle_is_not_reported(tables: None) -> None:
    fill(IntRow, "auth", range(1, 21))
    fill(IntRow, "default", range(1, 21))
    IntRow.objects.using("default").filter(id=7).update(name="lagging")

    def catch_up() -> None:
        IntRow.objects.using("default").filter(id=7).update(name="name 7")
        connections["default"].close()

    timer = threading.Timer(0.3, catch_up)
    timer.start()
    findings, stats = audit(declare(IntRow), settle=1.5)
    timer.join()
    assert findings == []
    assert stats.candidates == 1
    assert stats.transient == 1


def test_row_parity__rows_written_after_the_audit_began_are_in_flight(tables: None) -> None:
    fill(IntRow, "auth", range(1, 21))
    fill(IntRow, "default", range(1, 21))
    started = dt.datetime.now(dt.UTC)
    IntRow.objects.using("auth").filter(id=3).update(name="new", updated_at=started + dt.timedelta(seconds=1))
    IntRow.objects.using("default").filter(id=4).update(name="stale")  # real drift, old change time
    findings, stats = diff_rows(bind_row_parity(declare(IntRow)), started_at=started)
    assert [f.key for f in findings] == ["4"]
    assert stats.in_flight == 1


def test_row_parity__incremental_compares_only_changed_rows(tables: None) -> None:
    fill(IntRow, "auth", range(1, 101))
    fill(IntRow, "default", range(1, 101))
    old_drift = 10
    IntRow.objects.using("default").filter(id=old_drift).update(name="old drift")
    since = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    later = since + dt.timedelta(days=1)
    # Changed on the source only (the target missed the update): drift in the window.
    IntRow.objects.using("auth").filter(id=20).update(name="renamed", updated_at=later)
    # Changed on both sides alike: no drift.
    for alias in ("auth", "default"):
        IntRow.objects.using(alias).filter(id=30).update(name="both", updated_at=later)
    fill(IntRow, "default", [500], updated_at=later)  # new extra row on the target
    started = dt.datetime.now(dt.UTC)
    findings, stats = diff_rows(bind_row_parity(declare(IntRow)), started_at=started, since=since)
    assert kinds(findings) == {"mismatch": {"20"}, "extra": {"500"}}
    assert stats.compared == 2  # rows changed since the watermark on the larger side


def _pg() -> bool:
    return all(connections[a].vendor == "postgresql" for a in ("auth", "default"))


@pytest.mark.parametrize("strategy", ["aggregate", "stream"])
def test_row_parity__both_first_passes_find_the_same_exact_drift(tables: None, strategy: str) -> None:
    fill(StrRow, "auth", range(1, 301))
    fill(StrRow, "default", [i for i in range(1, 301) if i != 7])
    fill(StrRow, "default", [900])
    StrRow.objects.using("default").filter(**key_of(StrRow, 300)).update(email="other@example.io")

    findings, stats = audit(declare(StrRow), strategy=strategy)

    assert kinds(findings) == {
        "missing": {key_text(StrRow, 7)},
        "extra": {key_text(StrRow, 900)},
        "mismatch": {key_text(StrRow, 300)},
    }
    # The aggregates disagree, so the aggregate pass goes on to stream; SQLite always streams.
    expected = "aggregate+stream" if strategy == "aggregate" and _pg() else "stream"
    assert stats.strategy == expected
    assert (stats.source_rows, stats.target_rows, stats.rows_fetched) == (300, 300, 4)


@pytest.mark.parametrize("strategy", ["aggregate", "stream"])
def test_row_parity__aggregate_pass_stops_on_identical_tables(tables: None, strategy: str) -> None:
    fill(IntRow, "auth", range(1, 401))
    fill(IntRow, "default", range(1, 401))
    findings, stats = audit(declare(IntRow), strategy=strategy)
    assert findings == []
    assert stats.compared == 400
    assert stats.strategy == ("aggregate" if strategy == "aggregate" and _pg() else "stream")


def test_row_parity__aggregate_pass_sees_a_swap_that_keeps_the_row_count(tables: None) -> None:
    """Same count, same keys' multiset of values but on other keys: the digest still differs."""
    fill(IntRow, "auth", range(1, 51))
    fill(IntRow, "default", range(1, 51))
    IntRow.objects.using("default").filter(id=1).update(name="name 2")
    IntRow.objects.using("default").filter(id=2).update(name="name 1")
    findings, stats = audit(declare(IntRow), strategy="aggregate")
    assert kinds(findings) == {"mismatch": {"1", "2"}}
    assert stats.strategy == ("aggregate+stream" if _pg() else "stream")


def test_row_parity__unknown_strategy_is_refused(tables: None) -> None:
    with pytest.raises(ValueError, match="unknown row parity strategy 'fast'"):
        audit(declare(IntRow), strategy="fast")


# -- the range cache: a full audit re-reads only the TID ranges that moved ----------------------


def cached_counters(root: Any, side: int) -> Any:
    (index,) = root.glob(f"*/{side}-*/index.json")
    return json.loads(index.read_text())["records"]["counters"]


def test_range_cache__second_audit_proves_each_unchanged_side_and_hashes_no_row(
    tables: None, range_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(StrRow, "auth", range(1, 2001))
    fill(StrRow, "default", [i for i in range(1, 2001) if i not in (3, 1500)])
    fill(StrRow, "default", [2001])
    StrRow.objects.using("default").filter(**key_of(StrRow, 2000)).update(name="changed")
    flush_stats()
    expected = {
        "missing": {key_text(StrRow, 3), key_text(StrRow, 1500)},
        "extra": {key_text(StrRow, 2001)},
        "mismatch": {key_text(StrRow, 2000)},
    }
    decl = declare(StrRow)

    first, first_stats = audit(decl, cache_key=decl.name)
    calls = aggregates_taken(monkeypatch)
    second, second_stats = audit(decl, cache_key=decl.name)

    assert (kinds(first), first_stats.strategy) == (expected, "stream")
    assert (kinds(second), second_stats.strategy) == (expected, "cached")
    assert (second_stats.source_rows, second_stats.target_rows) == (2000, 1999)
    assert second_stats.extra["connections"] == 2  # no range digests
    assert (calls, second_stats.extra["proven_sides"]) == ([], 2)  # no aggregate either
    assert not list(range_cache.glob("*/*/*.tmp*"))


@pytest.mark.parametrize("proof", [True, False], ids=["range proof", "range digests"])
def test_range_cache__moved_counters_look_at_the_ranges_then_trust_the_cache_again(
    tables: None, range_cache: Any, monkeypatch: pytest.MonkeyPatch, proof: bool
) -> None:
    """A write that leaves every range as it was (a row rewritten as it was, on its page): the
    counters moved, so the audit looks at each range. The range proof sees a row written since
    and reads that one row (``_delta``); the digests (when the records' mark is not on this
    history) see no range moved and read nothing more. Either way the records are noted as current, and the
    next audit takes the short way again."""
    with connections["auth"].cursor() as cursor:
        cursor.execute("ALTER TABLE t_int_rows SET (fillfactor = 50)")  # room for a HOT update
    fill(IntRow, "auth", range(1, 2001))
    fill(IntRow, "default", range(1, 2001))
    IntRow.objects.using("default").filter(id=1200).update(name="drifted")
    flush_stats()
    decl = declare(IntRow)
    assert audit(decl, cache_key=decl.name)[1].strategy == "stream"
    before = cached_counters(range_cache, 0)
    with connections["auth"].cursor() as cursor:
        cursor.execute("UPDATE t_int_rows SET name = name WHERE id = 10")
    flush_stats()
    if not proof:
        break_records_mark(range_cache, 0)
    digests = digests_read(monkeypatch)

    findings, stats = audit(decl, cache_key=decl.name)
    again, again_stats = audit(decl, cache_key=decl.name)

    expected = "cached+ranges+delta" if proof else "cached+ranges"
    assert (kinds(findings), stats.strategy) == ({"mismatch": {"1200"}}, expected)
    assert (len(digests) == 0) == proof  # the digests of every range, or of none
    assert cached_counters(range_cache, 0) != before
    assert (kinds(again), again_stats.strategy) == ({"mismatch": {"1200"}}, "cached")


def test_range_cache__counters_choose_the_path_but_the_aggregate_decides(
    tables: None, range_cache: Any
) -> None:
    """A change the counters do not show yet (their flush lags): the aggregate disagrees with
    the cache, so the side looks at its ranges and the change is found."""
    decl = audited_clean()
    IntRow.objects.using("default").filter(id=1700).update(name="drifted")
    flush_stats()
    claim_current_counters(range_cache, 1, "default")

    findings, stats = audit(decl, cache_key=decl.name)

    assert (kinds(findings), stats.strategy) == ({"mismatch": {"1700"}}, "cached+ranges+delta")


def aggregates_taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The aliases of every aggregate an audit runs from now on (plain or marked)."""
    calls: list[str] = []
    plain, marked = rowside.RowSide.aggregate, rangecache.SideCache.marked_aggregate

    def counted(self: rowside.RowSide, since: dt.datetime | None = None) -> tuple[int, int]:
        calls.append(self.alias)
        return plain(self, since)

    def counted_marked(self: rangecache.SideCache, side: rowside.RowSide) -> Any:
        calls.append(side.alias)
        return marked(self, side)

    monkeypatch.setattr(rowside.RowSide, "aggregate", counted)
    monkeypatch.setattr(rangecache.SideCache, "marked_aggregate", counted_marked)
    return calls


def test_range_cache__a_side_the_aggregate_pass_settles_is_not_aggregated_again(
    tables: None, range_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a clean run the aggregate pass goes first: the unchanged source is proven so
    without an aggregate, the changed target aggregates once; they disagree, and in the scan
    the source takes its records on that proof, the target on that same aggregate's word."""
    decl = audited_clean()
    IntRow.objects.using("default").filter(id=1700).update(name="drifted")
    flush_stats()
    calls = aggregates_taken(monkeypatch)

    findings, stats = audit(decl, cache_key=decl.name, strategy="aggregate")

    assert (kinds(findings), stats.strategy) == ({"mismatch": {"1700"}}, "aggregate+cached+ranges+delta")
    assert calls == ["default"]  # the target's, in the first pass, once
    assert stats.extra["proven_sides"] == 1


def test_range_cache__a_side_rewritten_with_its_own_values_is_looked_at_not_taken(
    tables: None, range_cache: Any
) -> None:
    """Rows rewritten with their own values (an undo, a no-op update) leave the side's totals
    as the records have them, at new TIDs. The aggregate pass finds the totals equal, but rows
    were written since the records' mark: the ranges are looked at and the moved one updated,
    instead of taking stale TIDs, failing on them and scanning both sides again."""
    decl = audited_clean()
    with connections["auth"].cursor() as cursor:
        cursor.execute("UPDATE t_int_rows SET name = name WHERE id <= 50")
    IntRow.objects.using("default").filter(id=20).update(name="drifted")
    flush_stats()

    findings, stats = audit(decl, cache_key=decl.name, strategy="aggregate")

    assert kinds(findings) == {"mismatch": {"20"}}
    assert "stale_cache" not in stats.extra
    assert stats.strategy == "aggregate+ranges+delta"
    # The source's records are current again: the next audit takes them on its proof.
    again, again_stats = audit(decl, cache_key=decl.name)
    assert (kinds(again), again_stats.strategy) == ({"mismatch": {"20"}}, "cached")


def digests_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The first block of every range whose digest an audit reads from now on (it hashes its rows)."""
    starts: list[int] = []
    real = rowside.RowSide.range_sql

    def counted(self: rowside.RowSide, start: int, end: int | None, digest: bool = False) -> str:
        if digest:
            starts.append(start)
        return real(self, start, end, digest)

    monkeypatch.setattr(rowside.RowSide, "range_sql", counted)
    return starts


def break_records_mark(root: Any, side: int) -> None:
    """Put side ``side``'s records on another timeline: their mark no longer proves a range."""
    (index,) = root.glob(f"*/{side}-*/index.json")
    cached = json.loads(index.read_text())
    cached["records"]["mark"]["timeline"] += 1
    index.write_text(json.dumps(cached))


def deltas_read(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, bool]]:
    """Every range delta an audit reads from now on: (alias, rows hashed, kept TIDs sent)."""
    read: list[tuple[str, int, bool]] = []
    real = rowside.RowSide.delta_unit

    def counted(self: rowside.RowSide, sql: str) -> rowside.Delta:
        delta = real(self, sql)
        read.append((self.alias, len(delta.fps), delta.kept is not None))
        return delta

    monkeypatch.setattr(rowside.RowSide, "delta_unit", counted)
    return read


def streams_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The alias of every unit an audit streams (hashing every row of it) from now on."""
    streamed: list[str] = []
    real = rowside.RowSide.stream_unit

    def counted(self: rowside.RowSide, sql: str, params: list[Any]) -> Any:
        streamed.append(self.alias)
        return real(self, sql, params)

    monkeypatch.setattr(rowside.RowSide, "stream_unit", counted)
    return streamed


def test_range_cache__a_change_between_audits_hashes_only_the_rows_written(
    tables: None, range_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ranges that moved are told from the rows' xmin (``rangecache.written_sql``), not from
    digests; in them only the rows written since are hashed (``_delta``), and a row gone is told
    from the TIDs of the rows kept. The records so rewritten describe the tables: the next
    audit finds the same from them alone."""
    decl = audited_clean()
    IntRow.objects.using("default").filter(id=1700).update(name="drifted")
    IntRow.objects.using("auth").filter(id=5).delete()
    flush_stats()
    digests = digests_read(monkeypatch)
    deltas = deltas_read(monkeypatch)
    streamed = streams_read(monkeypatch)

    findings, stats = audit(decl, cache_key=decl.name)

    assert kinds(findings) == {"mismatch": {"1700"}, "extra": {"5"}}
    assert stats.strategy == "ranges+delta"
    assert (digests, streamed) == ([], [])
    hashed = Counter[str]()
    for alias, rows, _ in deltas:
        hashed[alias] += rows
    assert hashed == Counter({"default": 1})  # the new version of 1700; nothing on the source
    assert ("auth", 0, True) in deltas  # the source's range that lost 5: its kept TIDs
    assert (stats.candidates, stats.extra.get("stale_cache")) == (2, None)
    # The rewritten cache describes the tables now: a third audit finds the same from the
    # aggregates and the cached records alone.
    again, again_stats = audit(decl, cache_key=decl.name)
    assert (kinds(again), again_stats.strategy) == ({"mismatch": {"1700"}, "extra": {"5"}}, "cached")
    assert (again_stats.candidates, again_stats.extra.get("stale_cache")) == (2, None)


def test_range_cache__a_tid_freed_and_taken_by_a_new_row_is_read_as_written(
    tables: None, range_cache: Any
) -> None:
    """A row deleted, its slot freed by VACUUM and taken by a new row: the TID the records hold
    is there again, with another row. The new row is written since the records, so the old
    record at that TID is dropped and the new one added; the cached side stays exact."""
    decl = audited_clean()
    with connections["auth"].cursor() as cursor:
        cursor.execute("SELECT ctid::text FROM t_int_rows WHERE id = 10")
        before = cursor.fetchone()[0]
        cursor.execute("DELETE FROM t_int_rows WHERE id = 10")
        cursor.execute("VACUUM t_int_rows")
    fill(IntRow, "auth", [2500])
    with connections["auth"].cursor() as cursor:
        cursor.execute("SELECT ctid::text FROM t_int_rows WHERE id = 2500")
        assert cursor.fetchone()[0] == before  # the freed slot, taken
    flush_stats()

    findings, stats = audit(decl, cache_key=decl.name)
    again, again_stats = audit(decl, cache_key=decl.name)

    expected = {"missing": {"2500"}, "extra": {"10"}}
    assert (kinds(findings), stats.strategy) == (expected, "cached+ranges+delta")
    assert (kinds(again), again_stats.strategy) == (expected, "cached")
    for run in (stats, again_stats):
        assert (run.candidates, run.extra.get("stale_cache")) == (2, None)


def claim_current_counters(root: Any, side: int, alias: str) -> None:
    """Make side ``side``'s cache claim the table's write counters as they are now, as if the
    writes since the cache was written were not counted yet (PostgreSQL's flush lags)."""
    (index,) = root.glob(f"*/{side}-*/index.json")
    cached = json.loads(index.read_text())
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT pg_stat_get_tuples_inserted(c.oid), pg_stat_get_tuples_updated(c.oid),"
            " pg_stat_get_tuples_deleted(c.oid) FROM pg_class c WHERE c.oid = 't_int_rows'::regclass"
        )
        now = [int(n) for n in cursor.fetchone()]
    cached["records"]["counters"] = cached["summary"]["counters"] = now
    index.write_text(json.dumps(cached))


def audited_clean() -> RowParity:
    """2,000 identical rows a side, audited once: the range caches written, the counters current."""
    fill(IntRow, "auth", range(1, 2001))
    fill(IntRow, "default", range(1, 2001))
    flush_stats()
    decl = declare(IntRow)
    assert audit(decl, cache_key=decl.name)[0] == []
    return decl


def cached_then_scattered() -> RowParity:
    """``audited_clean``, then every 25th target row changed: nearly all of its ranges moved."""
    decl = audited_clean()
    IntRow.objects.using("default").filter(id__in=SCATTERED).update(name="drifted")
    flush_stats()
    return decl


SCATTERED = range(1, 2001, 25)


@pytest.mark.parametrize("proof", [True, False], ids=["range proof", "range digests"])
def test_range_cache__scattered_writes_stream_the_side_without_reading_digests(
    tables: None, range_cache: Any, monkeypatch: pytest.MonkeyPatch, proof: bool
) -> None:
    """The counters show more updates and deletes than would leave half the ranges untouched,
    were they spread. The range proof, which hashes nothing, still looks (writes are often in a
    few ranges) and finds most ranges moved; in them it hashes only the 80 rows written
    (``_delta``). Without it the side streams at once (the digests would only have led there).
    Either way no digest is read, and the finding is exact."""
    decl = cached_then_scattered()
    if not proof:
        break_records_mark(range_cache, 1)
    digests = digests_read(monkeypatch)
    deltas = deltas_read(monkeypatch)

    findings, stats = audit(decl, cache_key=decl.name)

    assert kinds(findings) == {"mismatch": {str(i) for i in SCATTERED}}
    assert stats.strategy == ("cached+ranges+delta" if proof else "cached+stream")
    assert digests == []
    assert sum(rows for _, rows, _ in deltas) == (len(SCATTERED) if proof else 0)
    # One pass over the ranges (counted, written rows hashed, kept TIDs at once), no counting pass.
    assert all(kept for _, _, kept in deltas)
    again, again_stats = audit(decl, cache_key=decl.name)
    assert (kinds(again), again_stats.strategy) == (kinds(findings), "cached")
    assert (again_stats.candidates, again_stats.extra.get("stale_cache")) == (len(SCATTERED), None)


def test_range_cache__a_side_mostly_rewritten_streams_in_full(
    tables: None, range_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When most of a side's rows were written since its records, hashing them in the ranges
    costs as much as a full stream, which then reads the side instead (once the counting pass
    has shown it: the counters, lagging here, did not)."""
    decl = audited_clean()
    IntRow.objects.using("default").filter(id__gt=900).update(name="drifted")
    flush_stats()
    claim_current_counters(range_cache, 1, "default")
    deltas = deltas_read(monkeypatch)

    findings, stats = audit(decl, cache_key=decl.name)

    assert kinds(findings) == {"mismatch": {str(i) for i in range(901, 2001)}}
    assert (stats.strategy, deltas) == ("cached+ranges+stream", [])


def test_range_cache__many_writes_in_a_few_ranges_stream_only_those(
    tables: None, range_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 updates would move every range were they spread; they are the table's first rows.
    With counters that show them (one pass over the ranges) or that lag (a counting pass, then
    the few moved ranges: the rows' old pages, the pages their new versions went to), only the
    200 rows written are hashed, and nothing is streamed."""
    decl = audited_clean()
    IntRow.objects.using("default").filter(id__lte=200).update(name="drifted")
    flush_stats()
    deltas = deltas_read(monkeypatch)
    streamed = streams_read(monkeypatch)

    findings, stats = audit(decl, cache_key=decl.name)

    assert kinds(findings) == {"mismatch": {str(i) for i in range(1, 201)}}
    assert stats.strategy == "cached+ranges+delta"
    assert {alias for alias, _, _ in deltas} == {"default"}
    assert (sum(rows for _, rows, _ in deltas), streamed) == (200, [])
    (index,) = range_cache.glob("*/1-*/index.json")
    ranges = len(json.loads(index.read_text())["records"]["units"])
    assert len(deltas) == ranges  # the one pass

    IntRow.objects.using("default").filter(id__lte=200).update(name="drifted again")
    flush_stats()
    claim_current_counters(range_cache, 1, "default")
    deltas.clear()
    findings, stats = audit(decl, cache_key=decl.name)

    assert kinds(findings) == {"mismatch": {str(i) for i in range(1, 201)}}
    assert stats.strategy == "cached+ranges+delta"
    assert 0 < len(deltas) * 4 <= ranges  # a quarter of the ranges at most
    assert (sum(rows for _, rows, _ in deltas), streamed) == (200, [])


@pytest.mark.parametrize("proof", [True, False], ids=["range proof", "range digests"])
def test_range_cache__progress_counts_each_row_once_when_the_ranges_are_looked_at(
    tables: None, range_cache: Any, proof: bool
) -> None:
    """More than half the ranges moved though the counters did not show it: the side looks at
    its ranges, then reads the written rows in them (range proof) or, its digests having read
    every row, streams in full; the progress still adds up to both sides' rows, once."""
    decl = cached_then_scattered()
    claim_current_counters(range_cache, 1, "default")
    if not proof:
        break_records_mark(range_cache, 1)
    counted: list[int] = []
    lock = threading.Lock()

    def progress(n: int) -> None:
        with lock:
            counted.append(n)

    findings, stats = audit(decl, cache_key=decl.name, progress=progress)

    assert len(findings) == 80
    assert stats.strategy == ("cached+ranges+delta" if proof else "cached+ranges+stream")
    assert sum(counted) == 4000


def test_range_cache__a_row_moved_inside_its_range_voids_the_cache(tables: None, range_cache: Any) -> None:
    """Same values at a new TID, and the ranges told by their digests: the range's digest stays,
    the cached TID is stale; the audit notices when the candidate is not there, drops the cache
    and scans again, exactly."""
    with connections["default"].cursor() as cursor:
        # Room on every page, so that the update below stays on its page (a HOT update).
        cursor.execute("ALTER TABLE t_int_rows SET (fillfactor = 50)")
    fill(IntRow, "auth", range(1, 2001))
    fill(IntRow, "default", range(1, 2001))
    IntRow.objects.using("default").filter(id=900).update(name="drifted")
    flush_stats()
    decl = declare(IntRow)
    assert kinds(audit(decl, cache_key=decl.name)[0]) == {"mismatch": {"900"}}
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT ctid::text FROM t_int_rows WHERE id = 900")
        before = cursor.fetchone()[0]
        cursor.execute("UPDATE t_int_rows SET name = name WHERE id = 900")  # a new row version
        cursor.execute("SELECT ctid::text FROM t_int_rows WHERE id = 900")
        after = cursor.fetchone()[0]
    flush_stats()
    assert after != before  # a new TID...
    assert after.split(",")[0] == before.split(",")[0]  # ...on the same page
    # The range proof would see the new row version and stream its range; the digests do not.
    break_records_mark(range_cache, 1)

    findings, stats = audit(decl, cache_key=decl.name)

    assert kinds(findings) == {"mismatch": {"900"}}
    assert stats.extra.get("stale_cache") == 1
    assert stats.strategy == "cached+stream"  # the target scanned again; the source kept its cache


def test_range_cache__off_when_the_setting_is_none(tables: None, parallel_scans: None) -> None:
    fill(IntRow, "auth", range(1, 301))
    fill(IntRow, "default", range(1, 301))
    IntRow.objects.using("default").filter(id=7).update(name="drifted")
    decl = declare(IntRow)
    with override_settings(CONSISTENCY={"RANGE_CACHE_DIR": None, "SETTLE_SECONDS": 0}):
        strategies = [audit(decl, cache_key=decl.name)[1].strategy for _ in range(2)]
    assert strategies == ["stream", "stream"]
