"""After a few writes in neighbouring rows, an audit that must scan: with the range proof, and without.

    .venv/bin/python bench/rangeproof.py [--writes 2000] [--repeat 4]

On the row-parity bench tables (``bench/run.py sql --keep`` leaves them; BENCH_AUTH_DB and
BENCH_BACKEND_DB as there): one row of ``users`` is changed for the run, so that every audit of
``users`` finds drift and scans (its first pass is ``stream``); then, per round, ``--writes``
neighbouring rows of ``users`` (in TID order) are rewritten as they were, and
``manage.py checkconsistency users`` runs with the target's records proven range by range from
their rows' xmin, or, alternately, with their mark voided (another timeline), as an audit
without the range proof runs. Prints each run's strategy and check duration, then both lists
sorted. The changed row is put back at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from common import BACKEND_URL, PYTHON, ROOT, connect, django_env


def audit() -> tuple[str, int, float]:
    """(strategy, drift count, check duration) of one ``checkconsistency users`` process."""
    out = subprocess.run(
        [PYTHON, str(ROOT / "manage.py"), "checkconsistency", "users", "--format", "json", "--settle", "0"],
        env=django_env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    (check,) = json.loads(out.stdout)["checks"]
    return check["figures"].get("strategy", ""), check["drift_count"], check["duration"]


def void_target_mark() -> None:
    """Put the target's records on another timeline: their ranges must be told by digests."""
    for index in Path(ROOT / "var" / "rangecache").glob("users-*/1-*/index.json"):
        cached: dict[str, Any] = json.loads(index.read_text())
        if cached.get("records") and cached["records"].get("mark"):
            cached["records"]["mark"]["timeline"] += 1
            index.write_text(json.dumps(cached))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()
    backend = connect(BACKEND_URL)
    picked = backend.execute("SELECT id, full_name FROM users ORDER BY ctid LIMIT 1 OFFSET 500000").fetchone()
    assert picked is not None, "no bench data: run bench/run.py sql --rows 1000000 --keep first"
    key, name = picked
    backend.execute("UPDATE users SET full_name = full_name || 'x' WHERE id = %s", [key])
    try:
        for _ in range(2):  # the records written, then taken: the steady state of a drifted check
            audit()
        results: dict[str, list[float]] = {"range proof": [], "without": []}
        for round_ in range(args.repeat):
            order = ("range proof", "without") if round_ % 2 == 0 else ("without", "range proof")
            for variant in order:
                backend.execute(
                    "UPDATE users SET full_name = full_name WHERE id IN"
                    " (SELECT id FROM users ORDER BY ctid LIMIT %s OFFSET 100000)",
                    [args.writes],
                )
                backend.execute("SELECT pg_stat_force_next_flush()")
                backend.execute("SELECT 1")
                time.sleep(0.5)
                if variant == "without":
                    void_target_mark()
                strategy, drift, seconds = audit()
                results[variant].append(seconds)
                print(f"{variant:12} {strategy:28} drift {drift}  {seconds:.3f} s")
        for variant, runs in results.items():
            print(f"{variant:12} {', '.join(f'{s:.3f}' for s in sorted(runs))}")
    finally:
        backend.execute("UPDATE users SET full_name = %s WHERE id = %s", [name, key])


if __name__ == "__main__":
    main()
