"""Relay throughput: N auth-user changes relayed to the backend by 1 and by 2 worker processes.

Each worker process runs what the ``relay_outbox`` task runs (claim a batch with
SKIP LOCKED, apply, mark processed) until the outbox is empty; the ratio of two
workers to one is printed. Uses the databases in DATABASE_URL / AUTH_DATABASE_URL
(migrated here) and clears their users and outbox first: never point it at real data.

    .venv/bin/python bench/sync.py --events 100000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


def _setup() -> None:
    import django

    django.setup()


def _reset(events: int) -> None:
    from django.core.management import call_command

    from consistency.auth_service.models import AuthUser, Outbox, OutboxVersion
    from consistency.backend.models import User
    from consistency.models import UserSyncState
    from consistency.sync import outbox

    for alias in ("default", "auth"):
        call_command("migrate", database=alias, verbosity=0)
    for model in (Outbox, OutboxVersion, AuthUser):
        model.objects.using("auth").all()._raw_delete("auth")
    User.objects.all()._raw_delete("default")
    UserSyncState.objects.all()._raw_delete("default")
    users = [AuthUser(id=f"bench-{i:08}", email=f"bench{i}@bench.io") for i in range(events)]
    for start in range(0, events, 5000):
        chunk = AuthUser.objects.using("auth").bulk_create(users[start : start + 5000])
        # The events record_saved() would write, without its after-commit trigger (eager mode
        # would relay them right here).
        OutboxVersion.objects.using("auth").bulk_create(
            [OutboxVersion(user_id=u.pk, version=1) for u in chunk]
        )
        Outbox.objects.using("auth").bulk_create(
            [Outbox(user_id=u.pk, event="created", version=1, payload=outbox.user_snapshot(u)) for u in chunk]
        )


def _work(batch: int) -> None:
    _setup()
    from consistency.sync.relay import relay_pending

    while relay_pending(limit=batch, max_batches=1000).claimed:
        pass


def run(workers: int, events: int, batch: int) -> float:
    """Seconds for ``workers`` processes to relay ``events`` fresh events."""
    from django.db import connections

    from consistency.backend.models import User

    _reset(events)
    if User.objects.exists():
        raise SystemExit("events were relayed before the workers started")
    connections.close_all()
    began = time.perf_counter()
    procs = [mp.get_context("spawn").Process(target=_work, args=(batch,)) for _ in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    took = time.perf_counter() - began
    synced = User.objects.count()
    if synced != events:
        raise SystemExit(f"{workers} worker(s) synced {synced} of {events} users")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    _setup()
    rates = {}
    for workers in (1, 2):
        took = run(workers, args.events, args.batch)
        rates[workers] = args.events / took
        print(f"{workers} worker(s): {args.events} events in {took:.1f}s, {rates[workers]:,.0f} events/s")
    print(f"ratio 2 workers / 1 worker: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
