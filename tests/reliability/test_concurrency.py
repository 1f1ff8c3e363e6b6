"""An audit of `users` while writers change auth_users and users on their own connections:
no false drift (settle and confirm), no real drift missed.

Writer threads keep changing rows on both sides, one side then the other, as a sync does.
At a fixed point (both scans running, so both snapshots taken: the first progress report of
each side) the test changes chosen rows itself, so the rows that must be candidates are
known exactly. Assertions are on sets of (kind, key), never on time. The one premise that is
about time is the engine's own contract: a change whose two sides land within ``settle``
seconds is not drift. The test measures how long each writer's pair took and, should the
machine stall a writer longer than that, leaves that key out instead of flaking.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connections
from django.utils import timezone

from consistency.auth_service.models import AuthUser
from consistency.backend.models import User
from consistency.engine.findings import CheckResult
from consistency.engine.registry import registry
from consistency.engine.runner import AuditOptions, run_audit
from tests.reliability.conftest import (
    OLD,
    drift_target,
    finishes,
    make_users,
    release_connections,
    reliability_db,
)

pytestmark = reliability_db

SETTLE = 1.0  # seconds; small, as the tests' data is
GUARD = 60.0  # a hang guard for waits inside the test, not a performance claim


class Writers:
    """Threads changing users on both sides through their own connections until stopped.

    Updaters rewrite names of their own keys (source first, then target, each with a fresh
    updated_at); one inserter adds new pairs and deletes the pairs it added before. ``spans``
    keeps, per key, the longest time between the start of a change's first side and the end
    of its second.
    """

    def __init__(self, updater_keys: list[list[str]]) -> None:
        self.stop = threading.Event()
        self.pairs = [0] * (len(updater_keys) + 1)
        self.spans: dict[str, float] = {}
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(n, self._updates(keys)), daemon=True)
            for n, keys in enumerate(updater_keys)
        ]
        self.threads.append(
            threading.Thread(target=self._run, args=(len(updater_keys), self._inserts()), daemon=True)
        )

    def _updates(self, keys: list[str]) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
        for n, key in enumerate(itertools.cycle(keys)):
            name = f"Written {n}"

            def source(key: str = key, name: str = name) -> None:
                AuthUser.objects.using("auth").filter(pk=key).update(
                    full_name=name, updated_at=timezone.now()
                )

            def target(key: str = key, name: str = name) -> None:
                User.objects.using("default").filter(pk=key).update(full_name=name, updated_at=timezone.now())

            yield key, source, target

    def _inserts(self) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
        added: list[str] = []
        for n in itertools.count():
            key = f"n{n:05d}"

            def source(key: str = key) -> None:  # bulk_create: no signals, no outbox
                AuthUser.objects.using("auth").bulk_create([AuthUser(id=key, email=f"{key}@users.test")])

            def target(key: str = key) -> None:
                User.objects.using("default").bulk_create([User(id=key, email=f"{key}@users.test")])

            yield key, source, target
            added.append(key)
            if n % 2:
                gone = added.pop(0)

                def source_delete(key: str = gone) -> None:
                    with connections["auth"].cursor() as cursor:  # raw: no signals, no outbox
                        cursor.execute("DELETE FROM auth_users WHERE id = %s", [key])

                def target_delete(key: str = gone) -> None:
                    with connections["default"].cursor() as cursor:
                        cursor.execute("DELETE FROM users WHERE id = %s", [key])

                yield gone, source_delete, target_delete

    def _run(
        self, number: int, changes: Iterator[tuple[str, Callable[[], None], Callable[[], None]]]
    ) -> None:
        try:
            for key, first, second in changes:
                began = time.monotonic()
                first()
                second()
                span = time.monotonic() - began
                with self._lock:
                    self.spans[key] = max(span, self.spans.get(key, 0.0))
                    self.pairs[number] += 1
                if self.stop.is_set():
                    return
                time.sleep(0.002)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            release_connections()

    def wait_for(self, more: int) -> None:
        """Until every writer has finished ``more`` further changes (they are really running)."""
        with self._lock:
            goal = [p + more for p in self.pairs]
        deadline = time.monotonic() + GUARD
        while any(p < g for p, g in zip(self.pairs, goal, strict=True)):
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"writers stalled: {self.pairs} of {goal}"
            time.sleep(0.01)

    def slow(self, limit: float) -> set[str]:
        """Keys one of whose changes took longer than ``limit`` between its two sides."""
        return {key for key, span in self.spans.items() if span > limit}

    @contextmanager
    def running(self) -> Iterator[Writers]:
        for thread in self.threads:
            thread.start()
        try:
            self.wait_for(3)
            yield self
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join(GUARD)
        assert not any(t.is_alive() for t in self.threads), "a writer never finished"
        assert not self.errors, self.errors


class MidScan:
    """``progress_for`` for ``run_audit``: once both sides of `users` report scan progress (so
    both snapshots are taken and neither scan has been compared yet), runs ``action`` on fresh
    connections in another thread, and lets the scans go on when it is done."""

    def __init__(self, action: Callable[[dict[str, int]], None]) -> None:
        self.action = action
        self.pids: dict[str, int] = {}  # alias -> backend pid of that side's scan
        self.done = False
        self._ready = threading.Condition()

    def __call__(self, decl: Any) -> Callable[[int], None] | None:
        return self.progress if decl.name == "users" else None

    def progress(self, rows: int) -> None:
        with self._ready:
            if self.done:
                return
            scanning = [a for a in ("auth", "default") if connections[a].in_atomic_block]
            if not scanning:
                return  # not from a scan's snapshot (e.g. an aggregate pass that agreed)
            for alias in scanning:  # this thread scans that side
                self.pids[alias] = connections[alias].connection.info.backend_pid
            if len(self.pids) < 2:
                assert self._ready.wait_for(lambda: self.done, GUARD), "the other side never scanned"
                return
            finishes(lambda: self.action(dict(self.pids)), GUARD)
            self.done = True
            self._ready.notify_all()


def in_transaction(pids: list[int]) -> bool:
    with connections["auth"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND xact_start IS NOT NULL", [pids]
        )
        return bool(cursor.fetchone()[0])


def found(result: CheckResult) -> set[tuple[str, str]]:
    return {(f.kind, f.key) for f in result.findings}


def audit_users(settle: float, progress_for: MidScan | None = None) -> CheckResult:
    registry.autodiscover()
    run, results = finishes(
        lambda: run_audit([registry.get("users")], AuditOptions(settle=settle), progress_for)
    )
    assert run.status != "error", run.error
    return results[0]


def test_audit_while_writers_change_both_sides() -> None:
    ids = make_users(120)
    drifted, missing, half_done, repaired, settled, drift_during, both_during = (
        ids[0:2],
        ids[2],
        ids[3:7],
        ids[7:9],
        ids[9:11],
        ids[11:13],
        ids[13:15],
    )
    churned = [ids[20:50], ids[50:80]]

    # Real drift, older than the audit: two names, a backend row missing, a backend row extra.
    drift_target(drifted)
    User.objects.using("default").filter(pk=missing).delete()
    User.objects.using("default").create(id="x0001", email="x0001@users.test", updated_at=OLD)
    real = {("mismatch", k) for k in drifted} | {("missing", missing), ("extra", "x0001")}
    # Changes whose second side lands during the audit: the auth side is already written.
    # 'half_done' and 'settled' got new auth names (before the audit), 'repaired' is drift
    # the audit will see fixed.
    AuthUser.objects.using("auth").filter(pk__in=half_done + settled).update(full_name="Renamed")
    drift_target(repaired)
    release_connections()

    late: dict[str, float] = {}

    def complete_after_the_scans(pids: list[int]) -> None:
        """The second side of 'settled', as soon as both scans' transactions have ended: after
        the scan, before the confirm re-read (if this takes less than SETTLE)."""
        try:
            last_seen = time.monotonic()
            deadline = last_seen + GUARD
            while in_transaction(pids):
                assert time.monotonic() < deadline, "the scans never ended"
                last_seen = time.monotonic()
                time.sleep(0.01)
            User.objects.using("default").filter(pk__in=settled).update(full_name="Renamed")
            late["took"] = time.monotonic() - last_seen
        finally:
            release_connections()

    completer: list[threading.Thread] = []

    def during_the_scans(pids: dict[str, int]) -> None:
        writers.wait_for(3)  # the writers keep writing while both scans run
        User.objects.using("default").filter(pk__in=half_done).update(full_name="Renamed")
        for key in repaired:  # back to the seeded name
            User.objects.using("default").filter(pk=key).update(full_name=f"Name {key}")
        drift_target(drift_during, "Drifted during")  # real drift, after the snapshots
        for model, alias in ((AuthUser, "auth"), (User, "default")):
            model.objects.using(alias).filter(pk__in=both_during).update(
                full_name="Both sides", updated_at=timezone.now()
            )
        completer.append(threading.Thread(target=complete_after_the_scans, args=(list(pids.values()),)))
        completer[0].start()
        release_connections()

    writers = Writers(churned)
    with writers.running():
        result = audit_users(SETTLE, MidScan(during_the_scans))
        writers.wait_for(3)
    completer[0].join(GUARD)
    assert "took" in late, "the late side of 'settled' was never written"

    # Nothing real missed, whatever the writers did meanwhile.
    assert real <= found(result)
    # No false drift: only the real drift (and the drift planted during the scan, should the
    # engine see it) may be reported. A key is excused only if the machine stalled its change
    # for longer than SETTLE, the engine's stated limit.
    excused = writers.slow(SETTLE) | (set(settled) if late["took"] >= SETTLE else set())
    allowed = real | {("mismatch", k) for k in drift_during}
    assert {key for kind, key in found(result) - allowed} <= excused, (found(result) - allowed, excused)
    # The rows whose sides differed in the snapshots were candidates, dropped by the re-read.
    assert result.figures["candidates"] >= len(real) + len(half_done) + len(repaired) + len(settled)

    # Writers stopped: the next audit reports exactly the real drift, the drift planted during
    # the first audit included, and nothing the writers left behind.
    again = audit_users(0)
    assert found(again) == real | {("mismatch", k) for k in drift_during}
