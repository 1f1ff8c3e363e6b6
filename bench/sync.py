"""Relay throughput: N auth-user changes relayed to the backend by 1 and by 2 Celery workers.

The outbox is filled with N ``created`` events (what ``auth_users.bulk_create_users``
writes, without its after-commit trigger), then ``relay_outbox`` tasks are queued for
real ``celery -A project worker --pool solo`` processes started here (one process a
worker) on the broker in CELERY_BROKER_URL. The time runs from queueing the tasks to
the last event marked processed; every event must be relayed exactly once (one
attempt each) and every user must reach the backend. The ratio of two workers to one
is printed. Uses the databases in DATABASE_URL / AUTH_DATABASE_URL (migrated here) and
clears their users and outbox first: never point it at real data.

    .venv/bin/python bench/sync.py --events 100000 [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


WORKER_OPTIONS = (
    "--pool",
    "solo",
    "--loglevel",
    "WARNING",
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
)


def setup() -> None:
    import django

    if not os.environ.get("CELERY_BROKER_URL"):
        raise SystemExit("set CELERY_BROKER_URL (redis:// or amqp://): the benchmark runs real workers")
    django.setup()


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def reset_outbox() -> None:
    """Empty both databases' users, outbox and sync state (migrating them first)."""
    from django.core.management import call_command

    from consistency.auth_service.models import AuthSession, AuthUser, Outbox, OutboxVersion
    from consistency.backend.models import User
    from consistency.models import UserSyncState

    for alias in ("default", "auth"):
        call_command("migrate", database=alias, verbosity=0)
    for model in (Outbox, OutboxVersion, AuthSession, AuthUser):
        model.objects.using("auth").all()._raw_delete("auth")
    User.objects.all()._raw_delete("default")
    UserSyncState.objects.all()._raw_delete("default")


def fill(events: int) -> None:
    """``events`` new auth users and their ``created`` events, with no relay triggered."""
    from consistency.auth_service.models import AuthUser, Outbox, OutboxVersion
    from consistency.sync import outbox

    reset_outbox()
    users = [AuthUser(id=f"bench-{i:08}", email=f"bench{i}@bench.io") for i in range(events)]
    for start in range(0, events, 5000):
        chunk = AuthUser.objects.using("auth").bulk_create(users[start : start + 5000])
        OutboxVersion.objects.using("auth").bulk_create(
            [OutboxVersion(user_id=u.pk, version=1) for u in chunk]
        )
        Outbox.objects.using("auth").bulk_create(
            [Outbox(user_id=u.pk, event="created", version=1, payload=outbox.user_snapshot(u)) for u in chunk]
        )


def purge() -> None:
    from project.celery import app

    with app.connection_for_write() as conn:
        app.control.purge(connection=conn)


def start_workers(count: int, tag: str) -> list[subprocess.Popen[bytes]]:
    """``count`` worker processes (solo pool: one task at a time each), answering a ping."""
    from django.db import connections

    from project.celery import app

    connections.close_all()
    purge()
    names = [f"{tag}{n}-{os.getpid()}@bench" for n in range(count)]
    log = tempfile.NamedTemporaryFile(prefix="bench-worker-", suffix=".log", delete=False)  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "--quiet",
                "-A",
                "project",
                "worker",
                "-n",
                name,
                *WORKER_OPTIONS,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        for name in names
    ]
    deadline = time.monotonic() + 60
    while True:
        replies = app.control.ping(destination=names, timeout=1.0) or []
        if len(replies) == count:
            return procs
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            stop_workers(procs)
            raise SystemExit(f"{count} worker(s) did not start; see {log.name}")


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_drained(timeout: float) -> None:
    from consistency.sync.relay import pending_count

    deadline = time.monotonic() + timeout
    while pending_count():
        if time.monotonic() > deadline:
            raise SystemExit(f"{pending_count()} events still pending after {timeout:.0f}s")
        time.sleep(0.2)


def run(workers: int, events: int, batch: int) -> float:
    """Seconds for ``workers`` workers to relay ``events`` fresh events."""
    from django.db.models import Max

    from consistency.auth_service.models import Outbox
    from consistency.backend.models import User
    from consistency.tasks import relay_outbox

    fill(events)
    procs = start_workers(workers, "relay")
    try:
        # One relay_outbox task relays up to 20 batches; queue enough for one worker to finish
        # alone, plus one more per worker (tasks that find the outbox empty return at once).
        tasks = math.ceil(events / (batch * 20)) + workers
        began = time.time()
        for _ in range(tasks):
            relay_outbox.apply_async(kwargs={"limit": batch})
        wait_drained(timeout=max(120.0, events / 50))
    finally:
        stop_workers(procs)
    last = Outbox.objects.using("auth").aggregate(last=Max("processed_at"))["last"]
    attempts = set(Outbox.objects.using("auth").values_list("attempts", flat=True).distinct())
    synced = User.objects.count()
    if synced != events or attempts != {1}:
        raise SystemExit(f"{workers} worker(s): {synced} of {events} users synced, attempts {attempts}")
    return float(last.timestamp() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--batch", type=int, default=500, help="events a relay batch claims (SYNC_BATCH_SIZE)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each (alternating 1, 2, 1, 2...); medians compared"
    )
    args = parser.parse_args()
    setup()
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeat):
        for workers in (1, 2):
            print(f"{workers} worker(s): filling {args.events} events ({load()})", flush=True)
            took = run(workers, args.events, args.batch)
            rates[workers].append(args.events / took)
            print(
                f"{workers} worker(s): {args.events} events in {took:.1f}s, {args.events / took:,.0f} events/s"
                f" ({load()})",
                flush=True,
            )
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"median: 1 worker {one:,.0f} events/s, 2 workers {two:,.0f} events/s")
    print(f"ratio 2 workers / 1 worker: {two / one:.2f}x")


if __name__ == "__main__":
    main()
