"""Fan-out: a full audit of N rows (auth_users vs users, 300 drifted rows) by 1 and by 2 Celery workers.

The `users` check is audited with ``consistency.fanout_audit`` (segment tasks, see
consistency/engine/fanout.py) by real ``celery -A project worker --pool solo`` processes (one
process a worker) on the broker in CELERY_BROKER_URL: with one worker it coordinates and reads
every segment itself; with two, the second takes segments too. The time runs from sending the
task to the run recorded; every run must find exactly the 300 drifted rows. For reference, the
same audit in one process without fan-out (``manage.py checkconsistency users``) is timed too.
Settle is 0 s in every measurement (it is a fixed wait, the same for all); both tables are read
once before each configuration, so that none starts from colder pages than another.

Data: bench/datagen.py's data set in the databases BENCH_AUTH_DB / BENCH_BACKEND_DB (default
bench_fanout_auth / bench_fanout_backend), created and filled when missing; the drift is
injected for the measurement and undone after it.

    CELERY_BROKER_URL=redis://127.0.0.1:6379/10 flock /tmp/bench.lock \\
        .venv/bin/python bench/fanout.py --rows 10000000 [--repeat 2] [--segments 16]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
os.environ.setdefault("BENCH_AUTH_DB", "bench_fanout_auth")
os.environ.setdefault("BENCH_BACKEND_DB", "bench_fanout_backend")
sys.path[:0] = [str(BENCH), str(ROOT)]

import datagen  # noqa: E402
from common import AUTH_URL, BACKEND_URL, PYTHON, both, connect, run_timed, write_result  # noqa: E402

WORKER = (
    "--pool",
    "solo",
    "--loglevel",
    "INFO",
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
)
FIGURES = re.compile(r"fan-out figures of users: (\{.*\})")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _read(url: str, table: str) -> None:
    with connect(url) as conn:
        conn.execute(f"SELECT count(*) FROM {table}")


def warm() -> None:
    """Read both tables once, so every configuration starts from the same (cached) pages."""
    both(_read)


def django_setup() -> None:
    os.environ["DATABASE_URL"], os.environ["AUTH_DATABASE_URL"] = BACKEND_URL, AUTH_URL
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    if not os.environ.get("CELERY_BROKER_URL"):
        raise SystemExit("set CELERY_BROKER_URL (redis:// or amqp://): the benchmark runs real workers")
    import django

    django.setup()


def start_workers(count: int, log: Path) -> list[subprocess.Popen[bytes]]:
    from django.db import connections

    from project.celery import app

    connections.close_all()
    with app.connection_for_write() as conn:
        app.control.purge(connection=conn)
    names = [f"fanout{n}-{os.getpid()}@bench" for n in range(count)]
    with log.open("ab") as out:
        procs = [
            subprocess.Popen(
                [PYTHON, "-m", "celery", "--quiet", "-A", "project", "worker", "-n", name, *WORKER],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            for name in names
        ]
    deadline = time.monotonic() + 60
    while len(app.control.ping(destination=names, timeout=1.0) or []) < count:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            stop_workers(procs)
            raise SystemExit(f"{count} worker(s) did not start; see {log}")
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fanned_out(segments: int, log: Path) -> dict[str, Any]:
    """One ``consistency.fanout_audit`` of `users`, timed from sending it to its run recorded."""
    from consistency.fanout_tasks import fanout_audit_task
    from consistency.models import AuditRun, CheckRun, Drift

    last = AuditRun.objects.order_by("-id").values_list("id", flat=True).first() or 0
    seen = len(log.read_text().splitlines()) if log.exists() else 0
    began = time.perf_counter()
    fanout_audit_task.delay(checks=["users"], min_rows=0, segments=segments, settle=0)
    while True:
        run = AuditRun.objects.filter(pk__gt=last).exclude(status="running").first()
        if run is not None:
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - began
    check = CheckRun.objects.get(run=run, check_name="users")
    kinds = Counter(Drift.objects.filter(last_run=run, check_name="users").values_list("kind", flat=True))
    figures: dict[str, Any] = {}
    for line in log.read_text().splitlines()[seen:]:
        if found := FIGURES.search(line):
            figures = json.loads(found.group(1))
    return {
        "seconds": round(seconds, 3),
        "audit_seconds": round(check.duration, 3),
        "status": run.status,
        "drift": dict(kinds),
        "drift_count": check.drift_count,
        "compared": check.compared,
        "segments": check.segments,
        "figures": figures,
        "load": load(),
        "error": check.error,
    }


def in_process() -> dict[str, Any]:
    """The same audit in one process, without fan-out: ``manage.py checkconsistency users``."""
    cmd = [
        PYTHON,
        "manage.py",
        "checkconsistency",
        "users",
        "--settle",
        "0",
        "--format",
        "json",
        "--no-progress",
    ]
    timed = run_timed(cmd, env=dict(os.environ))
    check = next(c for c in json.loads(timed.stdout)["checks"] if c["name"] == "users")
    return {
        "seconds": round(timed.seconds, 3),
        "audit_seconds": check.get("duration"),
        "drift": dict(Counter(d["kind"] for d in check["drifts"])),
        "drift_count": check["drift_count"],
        "figures": check.get("figures"),
        "load": load(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each configuration (median printed)")
    parser.add_argument("--segments", type=int, default=16, help="segments a side")
    parser.add_argument("--no-reference", action="store_true", help="skip the in-process audit")
    args = parser.parse_args()

    datagen.ensure_databases()
    filled = datagen.ensure_rows(args.rows, keep=True)
    expected = datagen.inject_drift(args.rows)
    django_setup()
    log = Path(tempfile.mkstemp(prefix="bench-fanout-", suffix=".log")[1])
    result: dict[str, Any] = {
        "benchmark": "fanout",
        "rows": args.rows,
        "segments_per_side": args.segments,
        "expected": expected,
        "fill_seconds": round(filled, 1),
        "cpus": os.cpu_count(),
        "load_before": load(),
        "runs": {},
    }
    try:
        for workers in (1, 2):
            warm()
            procs = start_workers(workers, log)
            try:
                runs = [fanned_out(args.segments, log) for _ in range(args.repeat)]
            finally:
                stop_workers(procs)
            result["runs"][f"{workers}_worker"] = runs
            for run in runs:
                if run["drift"] != expected:
                    raise SystemExit(f"{workers} worker(s) found {run['drift']}, expected {expected}: {run}")
        if not args.no_reference:
            warm()
            result["runs"]["in_process"] = [in_process() for _ in range(args.repeat)]
    finally:
        datagen.restore_drift(args.rows)
    median = {k: statistics.median(r["seconds"] for r in v) for k, v in result["runs"].items()}
    result["median_seconds"] = median
    result["speedup_2_over_1"] = round(median["1_worker"] / median["2_worker"], 2)
    result["load_after"] = load()
    out = write_result("fanout", result)

    print(
        f"full audit of {args.rows:,} rows a side, 300 drifted, {args.segments} segments a side, settle 0 s"
    )
    for name, runs in result["runs"].items():
        shown = ", ".join(f"{r['seconds']:.2f} s" for r in runs)
        print(f"  {name:>10}: median {median[name]:.2f} s ({shown}); drift {runs[-1]['drift']}")
        for r in runs:
            f = r.get("figures") or {}
            if "scan_seconds" in f:
                print(
                    f"{'':14}scan {f['scan_seconds']:.2f} s, locate {f.get('locate_seconds', 0):.2f} s,"
                    f" workers {f.get('workers')}, load {r['load']}"
                )
    print(f"  2 workers / 1 worker speed-up: {result['speedup_2_over_1']:.2f}x")
    if "in_process" in median:
        print(f"  in-process / 2 workers: {median['in_process'] / median['2_worker']:.2f}x")
    print(
        f"  load average before {result['load_before']}, after {result['load_after']}; {out.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
