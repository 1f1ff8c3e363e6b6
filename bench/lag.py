"""Relay lag under steady load: auth-user changes at a fixed rate, one Celery worker.

Producer threads change existing users through ``auth_users.update_user`` (the service
path: outbox row in the same transaction, relay triggered after commit) at ``--rate``
changes a second for ``--seconds`` seconds, each change on a schedule fixed in
advance; one ``celery -A project worker --pool solo`` process relays them. Each
change's lag runs from its auth commit (an after-commit hook registered before the
relay trigger) to the moment the relay marks its event processed, which it does only
after the backend transaction committed: an upper bound of the auth-commit to
backend-commit time. Prints p50, p99 and the maximum, and the rate achieved.
Uses the databases in DATABASE_URL / AUTH_DATABASE_URL and the broker in
CELERY_BROKER_URL, and clears their users and outbox first: never point it at real data.

    .venv/bin/python bench/lag.py --rate 200 --seconds 60
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sync import load, reset_outbox, setup, start_workers, stop_workers, wait_drained


def seed(users: int) -> list[str]:
    """``users`` auth users, relayed to the backend before the clock starts."""
    from consistency.auth_service.models import AuthUser
    from consistency.sync import auth_users, relay

    reset_outbox()
    created = auth_users.bulk_create_users(
        [AuthUser(id=f"lag-{i:06}", email=f"lag{i}@bench.io") for i in range(users)]
    )
    relay.relay_pending(max_batches=1000)
    return [u.pk for u in created]


def produce(ids: list[str], rate: float, seconds: float, threads: int) -> tuple[dict[int, float], float]:
    """Make ``rate * seconds`` changes on schedule; their auth commit times, and the seconds it took."""
    from django.db import connections, transaction

    from consistency.sync import auth_users

    total = int(rate * seconds)
    committed: dict[int, float] = {}
    began = time.time() + 0.5

    def stamp(n: int) -> None:
        committed[n] = time.time()

    def run(first: int) -> None:
        try:
            for n in range(first, total, threads):
                delay = began + n / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                with transaction.atomic(using="auth"):
                    # Registered before update_user's own hook (the relay trigger): runs first.
                    transaction.on_commit(partial(stamp, n), using="auth")
                    auth_users.update_user(ids[n % len(ids)], full_name=f"change {n}")
        finally:
            connections.close_all()

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return committed, max(committed.values()) - began


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="changes a second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--users", type=int, default=2000, help="users the changes cycle through")
    parser.add_argument("--threads", type=int, default=8, help="producer threads")
    args = parser.parse_args()
    setup()
    from consistency.auth_service.models import Outbox

    ids = seed(args.users)
    procs = start_workers(1, "lag")
    try:
        print(f"{args.rate:.0f} changes/s for {args.seconds:.0f}s, 1 worker ({load()})", flush=True)
        committed, took = produce(ids, args.rate, args.seconds, args.threads)
        wait_drained(timeout=120)
    finally:
        stop_workers(procs)
    processed = {
        int(payload["full_name"].split()[1]): at.timestamp() if at else float("inf")
        for payload, at in Outbox.objects.using("auth")
        .filter(payload__full_name__startswith="change ")
        .values_list("payload", "processed_at")
    }
    if set(processed) != set(committed):
        raise SystemExit(f"{len(committed)} changes committed, {len(processed)} relayed")
    lags = sorted(processed[n] - committed[n] for n in committed)
    p50, p99 = statistics.quantiles(lags, n=100)[49], statistics.quantiles(lags, n=100)[98]
    print(f"{len(lags)} changes in {took:.1f}s ({len(lags) / took:.0f}/s achieved) ({load()})")
    print(
        f"lag auth commit -> backend commit: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms"
    )
    print(f"p99 target < 1000 ms: {'met' if p99 < 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
