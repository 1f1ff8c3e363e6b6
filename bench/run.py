"""The row-parity benchmark of issue 3: checkconsistency against its peers on the same data, one run.

    .venv/bin/python bench/run.py sql --rows 1000000 10000000 [--keep] [--skip-reladiff] [--skip-naive]

Per size: identical tables; then ~1% of rows changed, audited in full once (the first run after a
change, which must read every row) and incrementally; then 300 drifted rows (100 missing, 100
changed, 100 extra in ``users``). In each state checkconsistency runs three times: first right
after the state changed (its first pass was chosen from a run that saw the other state, and no
side can be proven unchanged), then twice more (steady: the previous run saw this state, so a side
unchanged since is proven so without hashing its rows; the better of the two is the figure of
record, as the floor's is the better of its two scans). The project is byte-compiled first, as
the image does. Prints wall seconds, each run's strategy, ratios against the floor and reladiff
with issue 3's targets, and writes bench/results/sql-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import datagen
from common import (
    AUTH_URL,
    BACKEND_URL,
    PYTHON,
    ROOT,
    ROW,
    SIDES,
    both,
    connect,
    django_env,
    run_timed,
    write_result,
)

COMMAND = ROOT / "consistency" / "management" / "commands" / "checkconsistency.py"
FLOOR = f"SELECT count(*), sum(hashtextextended({ROW}, 0)) FROM {{t}}"
EXPECTED = {"missing": 100, "mismatch": 100, "extra": 100}


def floor() -> dict[str, Any]:
    """One aggregate hash scan per table, both in parallel: the physical floor. Best of two."""

    def scan(url: str, table: str) -> Any:
        with connect(url) as conn:
            return conn.execute(FLOOR.format(t=table)).fetchone()

    times = []
    for _ in range(2):
        start = time.perf_counter()
        a, b = both(scan)
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "runs": times, "equal": a == b}


def compile_project() -> None:
    """Byte-compile the project as the image does (Dockerfile). This machine's environment sets
    PYTHONDONTWRITEBYTECODE, and every run would otherwise compile the modules it imports."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cmd = [PYTHON, "-m", "compileall", "-q", "consistency", "project", "manage.py"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def startup() -> dict[str, Any]:
    """The fixed cost of a ``manage.py checkconsistency`` process: ``--list`` reads no table."""
    if not COMMAND.exists():
        return {"available": False}
    timed = run_timed([PYTHON, "manage.py", "checkconsistency", "--list"], env=django_env())
    return {"seconds": timed.seconds, "peak_mb": timed.peak_mb}


def checkconsistency(*extra: str) -> dict[str, Any]:
    if not COMMAND.exists():
        return {"available": False}
    cmd = [PYTHON, "manage.py", "checkconsistency", "users", "--settle", "0", "--format", "json", *extra]
    timed = run_timed(cmd, env=django_env())
    out: dict[str, Any] = {"available": True, "seconds": timed.seconds, "peak_mb": timed.peak_mb}
    out["returncode"] = timed.returncode
    try:
        report = json.loads(timed.stdout)
        check = next(c for c in report["checks"] if c["name"] == "users")
        out["drift"] = dict(Counter(d["kind"] for d in check["drifts"]))
        out["drift_count"] = check["drift_count"]
        out["compared"] = check["compared"]
        out["audit_seconds"] = check.get("duration")  # the check itself, without process start-up
        out["figures"] = check.get("figures")
    except (ValueError, KeyError, StopIteration) as exc:
        out["error"] = f"{exc!r}: {timed.stderr[-400:]}"
    return out


def best_of_two(*extra: str) -> dict[str, Any]:
    """A figure of record (the steady state, the incremental audit): the better of two runs, as
    the floor is; a failed run, or two that disagree, is reported, never hidden."""
    runs = [checkconsistency(*extra) for _ in range(2)]
    failed = [r for r in runs if "error" in r or not r.get("seconds")]
    best = failed[0] if failed else min(runs, key=lambda r: r["seconds"])  # a failure is never hidden
    out = {**best, "runs": [r.get("seconds") for r in runs]}
    if not failed and any(runs[0].get(k) != runs[1].get(k) for k in ("drift", "compared")):
        seen = [(r.get("drift"), r.get("compared")) for r in runs]
        out["error"] = f"the two runs found different drift or compared different rows: {seen}"
    return out


def reladiff(timeout: int) -> dict[str, Any]:
    (ua, ta), (ub, tb) = SIDES
    cmd = [str(ROOT / ".venv" / "bin" / "reladiff"), ua.replace("postgres://", "postgresql://"), ta]
    cmd += [ub.replace("postgres://", "postgresql://"), tb, "-k", "id", "-c", "email", "-c", "full_name"]
    cmd += ["-c", "is_active", "-j", "4", "--json"]
    env = dict(os.environ, COLUMNS="100000")  # rich wraps JSON lines at the terminal width otherwise
    try:
        timed = run_timed(["timeout", str(timeout), *cmd], env=env)
    except subprocess.SubprocessError as exc:
        return {"error": repr(exc)}
    if timed.returncode == 124:
        return {"seconds": None, "timeout": timeout}
    signs: dict[str, set[str]] = {"-": set(), "+": set()}
    for line in timed.stdout.splitlines():
        if line.startswith("["):
            sign, row = json.loads(line)
            signs[sign].add(row[0])
    drift = {
        "missing": len(signs["-"] - signs["+"]),
        "mismatch": len(signs["-"] & signs["+"]),
        "extra": len(signs["+"] - signs["-"]),
    }
    return {
        "seconds": timed.seconds,
        "peak_mb": timed.peak_mb,
        "drift": drift,
        "returncode": timed.returncode,
    }


def naive() -> dict[str, Any]:
    timed = run_timed([PYTHON, str(ROOT / "bench" / "naive_merge.py")])
    return {"seconds": timed.seconds, "peak_mb": timed.peak_mb, "drift": json.loads(timed.stdout or "{}")}


def verdict(found: dict[str, Any], expected: dict[str, int]) -> str:
    if "error" in found:
        return "ERROR"
    if "drift" not in found:
        return "-"
    got = {k: v for k, v in found["drift"].items() if v}
    return "OK" if got == {k: v for k, v in expected.items() if v} else f"WRONG {got}"


def measure(args: argparse.Namespace, expected: dict[str, int]) -> dict[str, Any]:
    state: dict[str, Any] = {"floor": floor()}
    # The first run after the state changed chose its first pass from a run that saw the other
    # state; the second (steady state, the figure of record) from a run that saw this one.
    state["checkconsistency_first"] = checkconsistency()
    state["checkconsistency"] = best_of_two()
    if not args.skip_reladiff:
        state["reladiff"] = reladiff(args.reladiff_timeout)
    if not args.skip_naive:
        state["naive"] = naive()
    for name in ("checkconsistency_first", "checkconsistency", "reladiff", "naive"):
        if name in state:
            state[name]["verdict"] = verdict(state[name], expected)
    state["load_avg"] = os.getloadavg()
    return state


def _ok_seconds(found: dict[str, Any]) -> float | None:
    """A run's seconds, or None when it failed (a crashed audit has no meaningful time)."""
    return None if "error" in found else found.get("seconds")


def ratio(a: Any, b: Any) -> float | None:
    return a / b if a and b else None


def summarise(
    rows: int,
    same: dict[str, Any],
    drift: dict[str, Any],
    inc: dict[str, Any],
    full: dict[str, Any],
    startup_s: float | None,
) -> list[Any]:
    """(label, value, target, pass) rows for one size."""
    cc_t = {s: _ok_seconds(st["checkconsistency"]) for s, st in (("same", same), ("drift", drift))}
    rd_t = {s: st.get("reladiff", {}).get("seconds") for s, st in (("same", same), ("drift", drift))}
    floor_limit = 2.0 if rows >= 10_000_000 else 2.5
    runs = [st[run] for st in (same, drift) for run in ("checkconsistency_first", "checkconsistency")]
    peak = max((found.get("peak_mb") or 0) for found in runs) or None
    lines = [
        ("checkconsistency / floor, identical", ratio(cc_t["same"], same["floor"]["seconds"]), floor_limit),
        ("checkconsistency / floor, drift", ratio(cc_t["drift"], drift["floor"]["seconds"]), floor_limit),
        (
            "first run after a change / floor, identical",
            ratio(_ok_seconds(same["checkconsistency_first"]), same["floor"]["seconds"]),
            None,
        ),
        (
            "first run after a change / floor, drift",
            ratio(_ok_seconds(drift["checkconsistency_first"]), drift["floor"]["seconds"]),
            None,
        ),
        # Where the process time goes: the check itself, and the fixed start of Python and Django
        # (``startup``, a ``--list`` run), which a scheduled audit in a Celery worker never pays.
        (
            "the check alone / floor, identical",
            ratio(same["checkconsistency"].get("audit_seconds"), same["floor"]["seconds"]),
            None,
        ),
        (
            "the check alone / floor, drift",
            ratio(drift["checkconsistency"].get("audit_seconds"), drift["floor"]["seconds"]),
            None,
        ),
        ("start-up (--list) / floor", ratio(startup_s, same["floor"]["seconds"]), None),
        ("checkconsistency / reladiff, identical", ratio(cc_t["same"], rd_t["same"]), 0.5),
        ("checkconsistency / reladiff, drift", ratio(cc_t["drift"], rd_t["drift"]), 0.15),
        (
            "naive / floor, drift",
            ratio(drift.get("naive", {}).get("seconds"), drift["floor"]["seconds"]),
            None,
        ),
        ("reladiff / floor, drift", ratio(rd_t["drift"], drift["floor"]["seconds"]), None),
        # The target compares audits of the same rows, 1% changed: the check's own duration (run
        # records), not the fixed start of Python and Django, which a Celery-scheduled audit
        # never pays.
        (
            "incremental / full, audit time",
            ratio(inc.get("audit_seconds"), full.get("audit_seconds")),
            0.10,
        ),
        ("incremental / full, process wall time", ratio(_ok_seconds(inc), _ok_seconds(full)), None),
        ("checkconsistency peak MB", peak, 200 if rows >= 10_000_000 else None),
    ]
    return [(label, v, t, None if v is None or t is None else v <= t) for label, v, t in lines]


def print_size(rows: int, result: dict[str, Any]) -> None:
    print(f"\n== {rows:,} rows")
    print(
        f"{'tool':18} {'identical s':>12} {'drift s':>10} {'peak MB':>8}  verdict (identical / drift)  strategy"
    )
    for tool in ("floor", "checkconsistency_first", "checkconsistency", "reladiff", "naive"):
        same, drift = result["identical"].get(tool), result["drift"].get(tool)
        if same is None:
            continue
        if tool == "checkconsistency" and not same.get("available"):
            print(f"{tool:18} {'not available yet':>32}")
            continue
        secs = [f"{x:.2f}" if (x := s.get("seconds")) else "timeout" for s in (same, drift)]
        peak = max(s.get("peak_mb") or 0 for s in (same, drift))  # 0: measured in-process
        verdicts = f"{same.get('verdict', '')} / {drift.get('verdict', '')}"
        strategies = " / ".join(str((s.get("figures") or {}).get("strategy", "")) for s in (same, drift))
        shown = {"checkconsistency_first": "cc, first run", "checkconsistency": "cc, steady"}.get(tool, tool)
        print(f"{shown:18} {secs[0]:>12} {secs[1]:>10} {peak:8.0f}  {verdicts:26} {strategies.strip(' /')}")
    full = result.get("full_after_change") or {}
    if full.get("seconds"):
        strategy = (full.get("figures") or {}).get("strategy", "")
        print(
            f"{'full (1% changed)':18} {full['seconds']:>12.2f} {'':>10} {full['peak_mb']:8.0f}"
            f"  {full['verdict']:26} {strategy}"
        )
    inc = result["incremental"]
    if inc.get("seconds"):
        strategy = (inc.get("figures") or {}).get("strategy", "")
        print(
            f"{'incremental (1%)':18} {inc['seconds']:>12.2f} {'':>10} {inc['peak_mb']:8.0f}"
            f"  {inc['verdict']:26} {strategy}"
        )
    if result["startup"].get("seconds"):
        print(f"{'startup (--list)':18} {result['startup']['seconds']:>12.2f}")
    print(f"\n{'ratio':42} {'value':>8} {'target':>8}  result")
    for label, value, target, ok in result["ratios"]:
        shown = f"{value:8.2f}" if value is not None else "       -"
        goal = f"<={target:g}" if target is not None else ""
        print(f"{label:42} {shown} {goal:>8}  {'-' if ok is None else 'PASS' if ok else 'FAIL'}")


def run_size(rows: int, args: argparse.Namespace) -> dict[str, Any]:
    loaded = datagen.ensure_rows(rows, args.keep)
    result: dict[str, Any] = {"load_seconds": loaded, "table_mb": datagen.table_mb(), "startup": startup()}
    result["identical"] = measure(args, {})
    changed = datagen.change_one_percent()
    try:
        # The full audit of the same state: the first after the change, which must read every
        # row (the one after it would find both sides proven unchanged and hash none).
        result["full_after_change"] = full = checkconsistency()
        full["verdict"] = verdict(full, {})
        # Twice: the watermark's margin (INCREMENTAL_MARGIN_SECONDS, 300 s) covers the changed
        # rows for both runs, and both must compare the same rows.
        inc = best_of_two("--since", "last")
        inc["rows_changed"] = changed
        inc["verdict"] = verdict(inc, {})
        result["incremental"] = inc
    finally:
        datagen.undo_one_percent()
    datagen.inject_drift(rows)
    try:
        result["drift"] = measure(args, EXPECTED)
    finally:
        datagen.restore_drift(rows)
    result["ratios"] = summarise(
        rows,
        result["identical"],
        result["drift"],
        result["incremental"],
        result["full_after_change"],
        result["startup"].get("seconds"),
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suite", choices=["sql"])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--keep", action="store_true", help="reuse generated data when the row count matches")
    parser.add_argument("--skip-reladiff", action="store_true")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--reladiff-timeout", type=int, default=1800, help="seconds before reladiff is cut")
    args = parser.parse_args()
    datagen.ensure_databases()
    compile_project()
    report: dict[str, Any] = {"command": "bench/run.py " + " ".join(sys.argv[1:]), "sizes": {}}
    report["urls"] = [AUTH_URL, BACKEND_URL]
    for rows in args.rows:
        report["sizes"][str(rows)] = result = run_size(rows, args)
        print_size(rows, result)
    out = write_result("sql", report)
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
