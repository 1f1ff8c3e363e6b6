"""The fanned-out audit with real worker processes on the real Redis broker and both PostgreSQL aliases.

The coordinator runs either in a worker (``consistency.fanout_audit``) or in a thread of the test
(``fanout_audit``); helpers are ``celery -A project worker`` processes. To stop the audit at a
chosen point the test holds ``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`` on one side: every scan
of that side waits for it, while planning (which reads the table's statistics) does not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connections

from consistency.engine.registry import registry
from consistency.engine.runner import AuditOptions, run_audit
from consistency.fanout_tasks import fanout_audit, fanout_audit_task
from consistency.models import AuditRun, AuditSegment, CheckRun, Drift
from consistency.sync.audits import ScheduledAuditResult, scheduled_audit, workers_online
from project.celery import app
from tests.sync.conftest import (
    db_url,
    purge_broker,
    start_worker_process,
    stop_worker_process,
    sync_db,
    wait_until,
)

pytestmark = sync_db

N = 6000  # rows a side: about 150 pages, 4 segments of ~38 pages each
SEGMENTS = 4
OLD = "timestamptz '2024-01-01 00:00:00+00'"
KEY = "'u' || lpad(i::text, 6, '0')"
INSERT = {
    "auth_users": f"""INSERT INTO auth_users (id, email, full_name, hashed_password, auth_provider,
            provider_data, is_active, is_verified, created_at, updated_at, failed_login_attempts)
        SELECT {KEY}, 'user' || i || '@corp.io', 'User ' || i, 'h' || i, 'local', jsonb_build_object(),
               mod(i, 17) <> 0, true, {OLD}, {OLD}, 0 FROM {{rows}} AS i""",
    "users": f"""INSERT INTO users (id, email, full_name, hashed_password, is_active, is_superuser,
            is_developer, role, permissions, plan_tier, feature_flags, created_at, updated_at)
        SELECT {KEY}, 'user' || i || '@corp.io', 'User ' || i, 'h' || i, mod(i, 17) <> 0, false, false,
               'user', jsonb_build_object(), 'free', jsonb_build_object(), {OLD}, {OLD} FROM {{rows}} AS i""",
}
URL = {"auth_users": "auth", "users": "default"}


def key(i: int) -> str:
    return f"u{i:06d}"


def sql(table: str, statement: str, params: list[Any] | None = None) -> None:
    with psycopg.connect(db_url(URL[table]), autocommit=True) as conn:
        conn.execute(statement, params)


def seed() -> None:
    for table in INSERT:
        sql(table, INSERT[table].format(rows=f"generate_series(1, {N})"))
        sql(table, f"VACUUM ANALYZE {table}")


def plant_drift() -> dict[tuple[str, str], tuple[str, ...]]:
    """Drift of every kind, in the first and in the last segment; returns (kind, key) -> fields."""
    sql("users", f"DELETE FROM users WHERE id IN ('{key(1)}', '{key(2)}', '{key(N - 1)}', '{key(N)}')")
    sql("users", "VACUUM users")  # the extra rows may land in the freed first page
    sql("users", INSERT["users"].format(rows="unnest(ARRAY[9000001, 9000002])").replace(KEY, "'x' || i"))
    sql("users", f"UPDATE users SET full_name = 'Changed' WHERE id = '{key(3)}'")
    sql("users", f"UPDATE users SET is_active = NOT is_active WHERE id = '{key(N - 2)}'")
    sql("auth_users", f"UPDATE auth_users SET email = 'moved@corp.io' WHERE id = '{key(N // 2)}'")
    for table in INSERT:
        sql(table, f"ANALYZE {table}")
    return {
        **{("missing", key(i)): () for i in (1, 2, N - 1, N)},
        ("extra", "x9000001"): (),
        ("extra", "x9000002"): (),
        ("mismatch", key(3)): ("full_name",),
        ("mismatch", key(N - 2)): ("is_active",),
        ("mismatch", key(N // 2)): ("email",),
    }


def drift_of(run: AuditRun) -> dict[tuple[str, str], tuple[str, ...]]:
    return {
        (d.kind, d.key): tuple(d.fields)
        for d in Drift.objects.filter(check_name="users", last_run=run).order_by("key")
    }


def drift_records(run: AuditRun) -> list[tuple[Any, ...]]:
    found = Drift.objects.filter(check_name="users", last_run=run).order_by("kind", "key")
    return [(d.kind, d.key, d.fields, d.source, d.target) for d in found]


def segment_block(table: str, i: int) -> int:
    with psycopg.connect(db_url(URL[table])) as conn:
        row = conn.execute(
            f"SELECT (ctid::text::point)[0]::int FROM {table} WHERE id = %s", [key(i)]
        ).fetchone()
    assert row is not None
    return int(row[0])


def relpages(table: str) -> int:
    with psycopg.connect(db_url(URL[table])) as conn:
        row = conn.execute("SELECT relpages FROM pg_class WHERE relname = %s", [table]).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two worker processes on the test's broker and databases."""
    purge_broker()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(2):
            procs.append(start_worker_process(str(app.conf.broker_url), log=tmp_path / f"worker{n}.log"))
        yield procs
    finally:
        for proc in procs:
            stop_worker_process(proc)


def start_worker_with(log: Path, visibility_timeout: int = 900, **env: str) -> subprocess.Popen[bytes]:
    """A worker process like ``start_worker_process``, with ``env`` overriding its environment."""
    return start_worker_process(
        str(app.conf.broker_url), visibility_timeout=visibility_timeout, log=log, name="fanout-test", env=env
    )


class Coordinator(threading.Thread):
    """``fanout_audit`` of the users check in a thread of the test process (its own connections)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.result: ScheduledAuditResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = fanout_audit(["users"], min_rows=0, segments=SEGMENTS)
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            connections.close_all()

    def finish(self, timeout: float = 90) -> ScheduledAuditResult:
        self.join(timeout)
        assert not self.is_alive(), "the fanned-out audit did not finish"
        assert self.error is None, self.error
        assert self.result is not None
        return self.result


def run_of(result: ScheduledAuditResult) -> AuditRun:
    assert result.run_id is not None, result
    return AuditRun.objects.get(pk=result.run_id)


def waiting_scans(observer: psycopg.Connection[Any]) -> list[int]:
    rows = observer.execute(
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'SELECT string_agg%'"
        " AND datname = current_database()"
    ).fetchall()
    return [pid for (pid,) in rows]


def segments_where(**filters: Any) -> list[AuditSegment]:
    return list(AuditSegment.objects.filter(phase="scan", **filters).order_by("side", "index"))


def locked(table: str) -> psycopg.Connection[Any]:
    holder = psycopg.connect(db_url(URL[table]))
    holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    return holder


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    return wait_until(probe, timeout=timeout, what=what)


# -- the same drift as the single-process audit ----------------------------------------------------


def test_fanout__finds_exactly_the_drift_of_the_single_process_audit(
    workers: list[subprocess.Popen[bytes]],
) -> None:
    seed()
    expected = plant_drift()
    # The drift sits in the first and in the last segment of the source side (planned by relpages).
    per = -(-relpages("auth_users") // SEGMENTS)
    assert segment_block("auth_users", 1) // per == 0
    assert segment_block("auth_users", N) // per == SEGMENTS - 1

    single, _ = run_audit([registry.get("users")], AuditOptions(settle=0))
    assert drift_of(single) == expected
    single_records = drift_records(single)  # the fanned-out run sees the same records again

    fanout_audit_task.delay(checks=["users"], min_rows=0, segments=SEGMENTS)
    run = wait_for(
        lambda: AuditRun.objects.filter(trigger="schedule").exclude(status="running").first(),
        "the fanned-out audit",
        timeout=90,
    )
    assert run.status == "drift"
    assert drift_of(run) == expected
    assert drift_records(run) == single_records  # same kinds, keys, fields and both sides
    checks = {c.run_id: c for c in CheckRun.objects.filter(check_name="users")}
    assert checks[run.pk].segments == 2 * SEGMENTS  # it fanned out
    assert checks[single.pk].segments < 2 * SEGMENTS
    assert checks[run.pk].compared == checks[single.pk].compared == N
    assert checks[run.pk].drift_count == len(expected)
    assert not AuditSegment.objects.exists()  # working state dropped with the audit

    # Repaired stores: the fanned-out audit finds them agreeing and resolves the drift.
    sql("users", "DELETE FROM users WHERE id LIKE 'x%%'")
    sql("users", f"DELETE FROM users WHERE id IN ('{key(3)}', '{key(N - 2)}')")
    sql("users", INSERT["users"].format(rows=f"unnest(ARRAY[1, 2, 3, {N - 2}, {N - 1}, {N}])"))
    sql("users", f"UPDATE users SET email = 'moved@corp.io' WHERE id = '{key(N // 2)}'")
    fanout_audit_task.delay(checks=["users"], min_rows=0, segments=SEGMENTS)
    clean = wait_for(
        lambda: (
            AuditRun.objects.filter(trigger="schedule", status__in=["ok", "drift", "error"])
            .exclude(pk=run.pk)
            .first()
        ),
        "the second fanned-out audit",
        timeout=90,
    )
    assert clean.status == "ok"
    assert set(Drift.objects.filter(check_name="users").values_list("status", flat=True)) == {"resolved"}


# -- failures and redelivery -----------------------------------------------------------------------


def test_fanout__a_failing_segment_fails_the_run(tmp_path: Path) -> None:
    seed()
    plant_drift()
    purge_broker()
    # A worker whose auth database is unreachable: any source segment it takes fails.
    bad = start_worker_with(tmp_path / "bad.log", AUTH_DATABASE_URL="postgres://postgres@127.0.0.1:1/nowhere")
    holder = locked("auth_users")  # the coordinator waits in its first source segment
    coordinator = Coordinator()
    try:
        coordinator.start()
        failed = wait_for(lambda: segments_where(status="failed"), "a segment to fail")
        assert failed[0].side == "source"
    finally:
        holder.rollback()
        holder.close()
        stop_worker_process(bad)
    result = coordinator.finish()
    run = run_of(result)
    check = CheckRun.objects.get(run=run)
    assert (result.status, run.status, check.status) == ("error", "error", "error")
    assert "segment source #" in check.error
    assert "failed" in check.error
    assert not Drift.objects.filter(check_name="users").exists()  # a failure says nothing about drift
    assert not AuditSegment.objects.exists()


def test_fanout__a_segment_redelivered_after_its_worker_died_is_applied_once(tmp_path: Path) -> None:
    seed()
    expected = plant_drift()
    purge_broker()
    log = tmp_path / "worker.log"
    first = start_worker_with(log, visibility_timeout=2)
    holder = locked("auth_users")
    coordinator = Coordinator()
    with psycopg.connect(db_url("auth"), autocommit=True) as observer:
        try:
            coordinator.start()
            # The coordinator and the worker each hold a source segment, both waiting for the lock.
            held = wait_for(
                lambda: [s for s in segments_where(status="running") if s.claimed_by.startswith("task:")],
                "the worker to claim a segment",
            )
            wait_for(lambda: len(waiting_scans(observer)) == 2, "both scans to wait for the lock")
            os.kill(first.pid, signal.SIGKILL)
            assert first.wait(timeout=30) == -signal.SIGKILL
        finally:
            stop_worker_process(first, signal.SIGKILL)
            holder.rollback()
            holder.close()
    segment, task_id = held[0], held[0].claimed_by.removeprefix("task:")
    # Only the redelivered task may finish the dead worker's segment (the lease is 15 minutes).
    wait_for(lambda: len(segments_where(status="done")) >= 2 * SEGMENTS - 1, "the other segments")
    assert AuditSegment.objects.get(pk=segment.pk).status == "running"
    second = start_worker_with(log, visibility_timeout=2)
    try:
        result = coordinator.finish(timeout=120)
    finally:
        stop_worker_process(second)
    run = run_of(result)
    assert run.status == "drift"
    assert drift_of(run) == expected
    assert CheckRun.objects.get(run=run).compared == N  # the segment's rows counted once
    text = log.read_text()
    assert f"consistency.audit_segment[{task_id}] succeeded" in text  # the first one never finished it


# -- writes during the audit -----------------------------------------------------------------------


def test_fanout__writes_during_the_audit_give_no_false_drift_and_hide_no_real_drift(
    workers: list[subprocess.Popen[bytes]],
) -> None:
    seed()
    expected = plant_drift()
    holder = locked("users")  # the target side waits; the source side is read first
    coordinator = Coordinator()
    try:
        coordinator.start()
        wait_for(lambda: len(segments_where(side="source", status="done")) == SEGMENTS, "the source scan")
        # Writes after the source side was read and before the target side is: consistent on both
        # sides (stamped or not, updates, deletes, inserts), moved rows, and one real new drift.
        changes = [
            "UPDATE {t} SET full_name = full_name || ' v2', updated_at = now() WHERE id IN ({a})",
            "UPDATE {t} SET is_active = NOT is_active WHERE id IN ({b})",  # not stamped
            "DELETE FROM {t} WHERE id IN ({c})",
        ]
        a = ", ".join(f"'{key(i)}'" for i in range(100, 4000, 97))
        b = ", ".join(f"'{key(i)}'" for i in range(150, 5000, 113))
        c = ", ".join(f"'{key(i)}'" for i in (10, 20, N - 10))
        with psycopg.connect(db_url("auth")) as auth:
            for change in changes:
                auth.execute(change.format(t="auth_users", a=a, b=b, c=c))
            auth.execute(INSERT["auth_users"].format(rows=f"generate_series({N + 1}, {N + 50})"))
            auth.commit()
        for change in changes:
            holder.execute(change.format(t="users", a=a, b=b, c=c))
        holder.execute(INSERT["users"].format(rows=f"generate_series({N + 1}, {N + 50})"))
        holder.execute(
            f"UPDATE users SET full_name = 'Late drift' WHERE id = '{key(4500)}'"
        )  # real, unstamped
        holder.commit()
    finally:
        holder.rollback()
        holder.close()
    result = coordinator.finish()
    run = run_of(result)
    assert drift_of(run) == {**expected, ("mismatch", key(4500)): ("full_name",)}
    check = CheckRun.objects.get(run=run)
    assert check.segments == 2 * SEGMENTS
    # The writes did reach the audit: their rows were candidates the confirmation dismissed.
    assert check.rows_fetched > 2 * len(expected) + 50
    assert check.in_flight > 0


# -- the scheduled full audit fans out when enough workers answer -----------------------------------


def segment_tasks_received(tmp_path: Path) -> int:
    """``consistency.audit_segment`` tasks the ``workers`` fixture's processes logged as received."""
    return sum(
        log.read_text(errors="replace").count("consistency.audit_segment[")
        for log in tmp_path.glob("worker*.log")
    )


def test_scheduled_full_audit__fans_out_only_with_enough_workers_and_when_switched_on(
    workers: list[subprocess.Popen[bytes]], tmp_path: Path, settings: Any
) -> None:
    seed()
    expected = plant_drift()
    base = {**settings.CONSISTENCY, "FANOUT_ROWS": 0, "FANOUT_SEGMENTS": SEGMENTS}
    settings.CONSISTENCY = base
    assert workers_online() >= 2

    fanned = run_of(scheduled_audit(full=True, checks=["users"]))
    assert (fanned.status, drift_of(fanned)) == ("drift", expected)
    received = segment_tasks_received(tmp_path)
    assert received > 0  # the workers read segments of the nightly audit

    # An incremental audit never fans out, nor a full one with fan-out switched off or with
    # fewer workers online than FANOUT_MIN_WORKERS; each still finds the same drift.
    sql("users", f"UPDATE users SET updated_at = now() WHERE id = '{key(3)}'")
    incremental = run_of(scheduled_audit(full=False, checks=["users"]))
    assert ("mismatch", key(3)) in drift_of(incremental)
    for overrides in ({"FANOUT_ROWS": None}, {"FANOUT_MIN_WORKERS": 3}):
        settings.CONSISTENCY = {**base, **overrides}
        single = run_of(scheduled_audit(full=True, checks=["users"]))
        assert (single.status, drift_of(single)) == ("drift", expected), overrides
    assert segment_tasks_received(tmp_path) == received
