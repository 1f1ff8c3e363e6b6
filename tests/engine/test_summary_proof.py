"""The summary proof (``rangecache.prove_unchanged``): a side that cannot have changed since the
last audit's summary of it hashes no row, and no change, however it was written, passes for none.

PostgreSQL only (``range_cache`` skips elsewhere): the proof reads each row's ``xmin``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections, transaction

from consistency.engine import rangecache
from tests.engine.conftest import flush_stats
from tests.engine.test_rowdiff import aggregates_taken, audit, declare, fill, kinds
from tests.testapp.models import IntRow

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "auth"])


def summarised() -> Any:
    """2,000 identical rows a side, audited once by the aggregate pass: each side's summary written."""
    fill(IntRow, "auth", range(1, 2001))
    fill(IntRow, "default", range(1, 2001))
    flush_stats()
    decl = declare(IntRow)
    findings, stats = audit(decl, cache_key=decl.name, strategy="aggregate")
    assert (findings, stats.strategy) == ([], "aggregate")
    return decl


def index_of(root: Any, side: int) -> Any:
    (index,) = root.glob(f"*/{side}-*/index.json")
    return index


def claim_current_counters(root: Any, side: int, alias: str) -> None:
    """Make side ``side``'s summary claim the write counters as they are now (their flush lags)."""
    index = index_of(root, side)
    cached = json.loads(index.read_text())
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT pg_stat_get_tuples_inserted(c.oid), pg_stat_get_tuples_updated(c.oid),"
            " pg_stat_get_tuples_deleted(c.oid) FROM pg_class c WHERE c.oid = 't_int_rows'::regclass"
        )
        cached["summary"]["counters"] = [int(n) for n in cursor.fetchone()]
    index.write_text(json.dumps(cached))


def test_unchanged_sides_are_proven_so_and_no_row_is_hashed(
    tables: None, range_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    decl = summarised()
    calls = aggregates_taken(monkeypatch)

    findings, stats = audit(decl, cache_key=decl.name, strategy="aggregate")

    assert (findings, stats.strategy, stats.compared) == ([], "unchanged", 2000)
    assert (calls, stats.extra["proven_sides"]) == ([], 2)


def test_a_change_that_keeps_the_row_count_is_found(tables: None, range_cache: Any) -> None:
    """One row deleted and another inserted: the count is the summary's, the new row's xmin is not."""
    decl = summarised()
    with transaction.atomic(using="default"):
        IntRow.objects.using("default").filter(id=5).delete()
        fill(IntRow, "default", [2001])
    flush_stats()
    claim_current_counters(range_cache, 1, "default")  # as if the counters had not moved yet

    findings, stats = audit(decl, cache_key=decl.name, strategy="aggregate")

    assert kinds(findings) == {"missing": {"5"}, "extra": {"2001"}}
    assert stats.strategy.startswith("aggregate+")
    assert stats.extra["proven_sides"] == 1  # the source, untouched


def test_a_write_still_open_when_the_summary_was_taken_is_found_once_committed(
    tables: None, range_cache: Any
) -> None:
    """The summary's snapshot did not see an update that was running then; after it commits the
    row count is unchanged and its transaction id is below that snapshot's xmax (a later one
    finished first). Bounding the proof by the snapshot's xmin, not its xmax, is what finds it."""
    fill(IntRow, "auth", range(1, 2001))
    fill(IntRow, "default", range(1, 2001))
    flush_stats()
    decl = declare(IntRow)
    written, release = threading.Event(), threading.Event()

    def writer() -> None:
        try:
            with transaction.atomic(using="default"):
                IntRow.objects.using("default").filter(id=1700).update(name="drifted")
                written.set()
                release.wait(30)
            flush_stats()  # this connection's update in the write counters before it closes
        finally:
            connections["default"].close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert written.wait(30)
        with connections["auth"].cursor() as cursor:
            cursor.execute("SELECT pg_current_xact_id()")  # a later transaction, committed
        assert audit(decl, cache_key=decl.name, strategy="aggregate")[0] == []  # it cannot see it yet
    finally:
        release.set()
        thread.join()
    flush_stats()
    claim_current_counters(range_cache, 1, "default")

    findings, stats = audit(decl, cache_key=decl.name, strategy="aggregate")

    assert kinds(findings) == {"mismatch": {"1700"}}
    assert stats.extra["proven_sides"] == 1


def test_vacuum_freeze_keeps_the_proof_and_a_rewrite_voids_it(tables: None, range_cache: Any) -> None:
    decl = summarised()
    for alias in ("auth", "default"):
        with connections[alias].cursor() as cursor:
            cursor.execute("VACUUM (FREEZE) t_int_rows")

    assert audit(decl, cache_key=decl.name, strategy="aggregate")[1].strategy == "unchanged"

    with connections["default"].cursor() as cursor:
        cursor.execute("VACUUM (FULL) t_int_rows")  # new storage: the summary no longer applies
    findings, stats = audit(decl, cache_key=decl.name, strategy="aggregate")
    assert (findings, stats.strategy, stats.extra["proven_sides"]) == ([], "aggregate", 1)


EDITS: dict[str, Callable[[dict[str, int]], None]] = {
    "another timeline": lambda mark: mark.update(timeline=mark["timeline"] + 1),
    "WAL ahead of now": lambda mark: mark.update(lsn=mark["lsn"] + (1 << 40)),
    "transaction ids ahead of now": lambda mark: mark.update(xmax=mark["xmax"] + 10**9),
}


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_a_mark_not_behind_now_on_one_history_is_not_trusted(
    tables: None, range_cache: Any, edit: str
) -> None:
    """A failover or a restore forks the history: the proof needs the summary's mark on the same
    timeline, behind the current WAL position and transaction ids. The aggregate then decides,
    and its summary, with a good mark, serves the next audit."""
    decl = summarised()
    index = index_of(range_cache, 1)
    cached = json.loads(index.read_text())
    EDITS[edit](cached["summary"]["mark"])
    index.write_text(json.dumps(cached))

    findings, stats = audit(decl, cache_key=decl.name, strategy="aggregate")

    assert (findings, stats.strategy, stats.extra["proven_sides"]) == ([], "aggregate", 1)
    assert audit(decl, cache_key=decl.name, strategy="aggregate")[1].strategy == "unchanged"


def test_a_mark_too_many_transactions_ago_is_not_trusted(
    tables: None, range_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``age(xmin)`` is 32-bit: past the window, a row written since could look older than the mark."""
    decl = summarised()
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id()")  # one transaction id spent since the mark
    monkeypatch.setattr(rangecache, "WINDOW", 1)

    findings, stats = audit(decl, cache_key=decl.name, strategy="aggregate")

    assert (findings, stats.strategy, stats.extra.get("proven_sides")) == ([], "aggregate", None)


def spend_transaction_ids(n: int) -> None:
    with connections["default"].cursor() as cursor:
        for _ in range(n):
            cursor.execute("SELECT pg_current_xact_id()")  # each its own transaction, committed


def test_a_proof_near_the_window_moves_the_mark_so_a_quiet_table_stays_proven(
    tables: None, range_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past a quarter of the window since the mark, a proven side notes the proof's own mark: a
    table nobody writes to is never pushed out of the window by the rest of the cluster."""
    decl = summarised()
    mark_then = json.loads(index_of(range_cache, 1).read_text())["summary"]["mark"]
    monkeypatch.setattr(rangecache, "WINDOW", 8)
    spend_transaction_ids(3)  # past 8 // 4 since the mark, within 8

    assert audit(decl, cache_key=decl.name, strategy="aggregate")[1].strategy == "unchanged"
    mark_now = json.loads(index_of(range_cache, 1).read_text())["summary"]["mark"]
    assert mark_now["xmin"] >= mark_then["xmin"] + 3
    spend_transaction_ids(3)  # 6 from the moved mark; 9 or more from the first

    assert audit(decl, cache_key=decl.name, strategy="aggregate")[1].strategy == "unchanged"


def test_records_current_at_the_mark_move_on_with_it(
    tables: None, range_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proof that moves the summary's mark moves the records' with it when they were current
    at it: the next scan takes them on its proof alone (``cached``), no range looked at."""
    fill(IntRow, "auth", range(1, 2001))
    fill(IntRow, "default", range(1, 2001))
    IntRow.objects.using("default").filter(id=7).update(name="drifted")
    flush_stats()
    decl = declare(IntRow)
    assert kinds(audit(decl, cache_key=decl.name)[0]) == {"mismatch": {"7"}}  # the records written
    monkeypatch.setattr(rangecache, "WINDOW", 8)
    spend_transaction_ids(3)

    findings, stats = audit(decl, cache_key=decl.name)

    assert (kinds(findings), stats.strategy) == ({"mismatch": {"7"}}, "cached")
    for side in (0, 1):
        index = json.loads(index_of(range_cache, side).read_text())
        assert index["records"]["mark"] == index["summary"]["mark"]
    spend_transaction_ids(3)  # 9 or more from the records' first mark: out of the window
    findings, stats = audit(decl, cache_key=decl.name)
    assert (kinds(findings), stats.strategy, stats.extra["proven_sides"]) == (
        {"mismatch": {"7"}},
        "cached",
        2,
    )


def test_an_index_it_did_not_write_is_ignored(tables: None, range_cache: Any) -> None:
    decl = summarised()
    index = index_of(range_cache, 0)
    cached = json.loads(index.read_text())
    cached["summary"]["mark"] = {"xmin": "many"}
    index.write_text(json.dumps(cached))

    findings, stats = audit(decl, cache_key=decl.name, strategy="aggregate")

    assert (findings, stats.strategy, stats.extra["proven_sides"]) == ([], "aggregate", 1)


@pytest.fixture
def limited_target(tables: None) -> Iterator[None]:
    """``default`` connections act as a role that is no superuser and, in that database, may not
    execute ``pg_control_checkpoint()`` or ``pg_control_system()`` (revoked from PUBLIC, as a
    hardened database may)."""
    role = f"consistency_limited_{os.getpid()}"
    with connections["default"].cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role}")
        cursor.execute(f"GRANT ALL ON TABLE t_int_rows TO {role}")
        for function in ("pg_control_checkpoint()", "pg_control_system()"):
            cursor.execute(f"REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC")
    saved = dict(connections.settings["default"]["OPTIONS"])
    connections["default"].close()
    connections.settings["default"]["OPTIONS"] = {**saved, "assume_role": role}
    try:
        yield
    finally:
        connections["default"].close()
        connections.settings["default"]["OPTIONS"] = saved
        with connections["default"].cursor() as cursor:
            for function in ("pg_control_checkpoint()", "pg_control_system()"):
                cursor.execute(f"GRANT EXECUTE ON FUNCTION {function} TO PUBLIC")
            cursor.execute(f"DROP OWNED BY {role}")
            cursor.execute(f"DROP ROLE {role}")


def test_a_role_that_may_not_read_a_mark_audits_as_before(range_cache: Any, limited_target: None) -> None:
    """No mark on that side, so no proof: its aggregate runs every time, and drift is found."""
    fill(IntRow, "auth", range(1, 2001))
    fill(IntRow, "default", range(1, 2001))
    decl = declare(IntRow)
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT current_user, has_function_privilege('pg_control_checkpoint()', 'EXECUTE')")
        assert cursor.fetchone()[1] is False  # the role is in force

    first = audit(decl, cache_key=decl.name, strategy="aggregate")
    second = audit(decl, cache_key=decl.name, strategy="aggregate")
    IntRow.objects.using("default").filter(id=1700).update(name="drifted")
    third = audit(decl, cache_key=decl.name, strategy="aggregate")[0]

    assert [(f, s.strategy) for f, s in (first, second)] == [([], "aggregate"), ([], "aggregate")]
    assert second[1].extra.get("proven_sides", 0) <= 1  # the source's, at most
    assert kinds(third) == {"mismatch": {"1700"}}
    (index,) = range_cache.glob("*/1-*/index.json")
    assert json.loads(index.read_text())["summary"]["mark"] is None
