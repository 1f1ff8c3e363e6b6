"""Regenerate docs/RELIABILITY.md: run the reliability tests and write what each one tried.

    .venv/bin/python -m tests.reliability.report [pytest args...]

Runs ``pytest tests/reliability`` plus the sync fault tests (broker down, worker killed,
ClickHouse down during export) that exist in this tree, against the stores the environment
names (as ``scripts/test`` does), reads the JUnit XML and writes one row per test: the
fault, load or bad input tried, its outcome, and the data lost (every row that passes has
asserted that nothing was lost or leaked).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree as ET

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "RELIABILITY.md"

# (file, test name prefix) -> (area, what is tried, outcome asserted, data lost)
ROWS: list[tuple[str, str, str, str, str, str]] = [
    (
        "test_store_faults",
        "test_postgres_fault_mid_audit",
        "store fault",
        "PostgreSQL (`auth`) reset / blackholed / cut after half the bytes, during `users`",
        "exit 2, message names `PostgreSQL database 'auth'`, run and check `error`, ends within the connect timeout",
        "0: drift records unchanged",
    ),
    (
        "test_store_faults",
        "test_postgres_statement_timeout",
        "store fault",
        "PostgreSQL stalls (table locked by another session) during a scan",
        "statement timeout cancels it; exit 2 naming the database",
        "0: drift records unchanged",
    ),
    (
        "test_store_faults",
        "test_default_database_down",
        "store fault",
        "PostgreSQL `default` (where runs are recorded) down",
        "exit 2 `cannot record the audit in the 'default' database`",
        "0: nothing recorded, nothing changed",
    ),
    (
        "test_store_faults",
        "test_redis_fault_mid_audit",
        "store fault",
        "Redis reset / blackholed / cut after half the bytes, during `cache_auth_users`",
        "exit 2 naming Redis, socket timeout bounds the stall",
        "0: drift records unchanged",
    ),
    (
        "test_store_faults",
        "test_clickhouse_fault_mid_audit",
        "store fault",
        "ClickHouse reset / blackholed / cut after half the bytes, during `analytics_message_events`",
        "exit 2 naming clickhouse, `send_receive_timeout` bounds the stall",
        "0: drift records unchanged",
    ),
    (
        "test_repair_faults",
        "test_postgres_drop_mid_repair",
        "store fault",
        "every PostgreSQL connection reset after 3 of 6 repair actions",
        "exit 2; the transaction rolls back whole; a rerun repairs 6 of 6 and the audit is clean",
        "0: no half-applied plan",
    ),
    (
        "test_bad_input",
        "test_command_line__bad_option",
        "bad input",
        "`manage.py checkconsistency` with a bad option value or unknown option",
        "exit 2, argparse names the option, no traceback",
        "-",
    ),
    (
        "test_bad_input",
        "test_command__bad_value",
        "bad input",
        "unknown check, hostile check name, unknown tag, negative `--settle` / `--limit`, bad `--since`, `--execute` alone, unwritable `--output`",
        "exit 2 naming the value",
        "0: no run recorded",
    ),
    (
        "test_bad_input",
        "test_environment__bad_timeout",
        "bad input",
        "non-numeric, zero, negative, NaN or infinite timeout / pool variables",
        "start-up stops: `ImproperlyConfigured: VAR='value' is not usable`",
        "-",
    ),
    (
        "test_bad_input",
        "test_environment__timeouts_and_pool",
        "configuration",
        "timeouts and pool size from the environment",
        "they reach psycopg (`connect_timeout`, `statement_timeout`, `pool`) and django-redis",
        "-",
    ),
    (
        "test_bad_input",
        "test_hostile_identifiers__quoted",
        "bad input",
        "tables and columns named with `'`, `;`, `--`, blanks, upper case, `Ä`; values with SQL in them",
        "exact findings, repair works, canary tables intact",
        "0",
    ),
    (
        "test_bad_input",
        "test_hostile_identifiers__a_double_quote",
        "bad input",
        'a table name containing `"; DROP TABLE ...`',
        "exit 2, the injected statement never runs (canary intact)",
        "0",
    ),
    (
        "test_bad_input",
        "test_cache__values",
        "bad input",
        "cache values: not JSON, not UTF-8, a JSON list, a JSON string, an 8 MB value",
        "one finding each; report stays small (values over 2000 characters are shortened)",
        "0",
    ),
    (
        "test_bad_input",
        "test_rows__very_long",
        "bad input",
        "255-character names with combining marks, zero-width space, emoji, RTL override, quotes",
        "equal values agree; a one-character difference at the end is the only finding",
        "0",
    ),
    (
        "test_bad_input",
        "test_json_columns",
        "bad input",
        "JSON metadata that is a string, a list, a nested object, a number, null",
        "findings for the mismatched owners, no crash",
        "0",
    ),
    (
        "test_secrets",
        "test_planted_secrets",
        "security",
        "password hashes, token hashes, an encrypted value, provider data and a URL password planted in drifting rows and a cache entry",
        "none appears in text / JSON / JUnit reports, repair plans, drift records, repair logs, runs, logs or the admin pages",
        "0 leaked",
    ),
    (
        "test_secrets",
        "test_store_error_with_credentials",
        "security",
        "a store URL with a password, the store down",
        "the error shows `user:***@host`",
        "0 leaked",
    ),
    (
        "test_secrets",
        "test_bad_database_url",
        "security",
        "an unparsable `DATABASE_URL` with a password",
        "start-up error names the variable, not the password",
        "0 leaked",
    ),
    (
        "test_deploy",
        "test_check_deploy__clean",
        "security",
        "`manage.py check --deploy` with `project.settings_production`",
        "no issues at WARNING level",
        "-",
    ),
    (
        "test_deploy",
        "test_check_deploy__refuses",
        "security",
        "`check --deploy` with DEBUG on and the development key",
        "W018, consistency.W002, W003 reported",
        "-",
    ),
    (
        "test_worker_crash",
        "test_kill_9",
        "sync fault (tests/sync)",
        "worker killed with SIGKILL mid-relay",
        "redelivered, applied once",
        "0",
    ),
    (
        "test_relay",
        "test_relay__broker_down",
        "sync fault (tests/sync)",
        "broker down while auth users change",
        "nothing lost; the sweep relays it after the broker returns",
        "0",
    ),
    (
        "test_analytics_export",
        "test_export__clickhouse_down",
        "sync fault (tests/sync)",
        "ClickHouse down during export",
        "batch kept, retry delivers it, no duplicates",
        "0",
    ),
]

SYNC_TESTS = [
    "tests/sync/test_worker_crash.py",
    "tests/sync/test_analytics_export.py",
    "tests/sync/test_relay.py",
]


def run(extra: list[str]) -> Path:
    junit = Path(tempfile.mkdtemp()) / "reliability.xml"
    paths = ["tests/reliability", *[p for p in SYNC_TESTS if (ROOT / p).exists()]]
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "--create-db",
        "-q",
        f"--junitxml={junit}",
        *paths,
        *extra,
    ]
    print("running:", " ".join(cmd[1:]), file=sys.stderr)
    subprocess.run(cmd, cwd=ROOT, check=False)
    return junit


def outcomes(junit: Path) -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314 - pytest wrote it
        module = case.get("classname", "").rsplit(".", 1)[-1]
        name = case.get("name", "")
        if case.find("failure") is not None or case.find("error") is not None:
            status = "FAILED"
        elif (skip := case.find("skipped")) is not None:
            status = "xfail" if "xfail" in (skip.get("type") or "") else "skipped"
        else:
            status = "passed"
        found.setdefault((module, name), []).append(status)
    return found


def table(found: dict[tuple[str, str], list[str]]) -> list[str]:
    lines = ["| area | tried | outcome asserted | data lost | tests | result |", "|---|---|---|---|---|---|"]
    for module, prefix, area, tried, outcome, lost in ROWS:
        statuses = [s for (m, n), ss in found.items() if m == module and n.startswith(prefix) for s in ss]
        if not statuses:
            result = "not run (test not in this tree)"
        elif all(s == "passed" for s in statuses):
            result = "passed"
        else:
            result = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
        lines.append(f"| {area} | {tried} | {outcome} | {lost} | {len(statuses)} | {result} |")
    return lines


def main() -> int:
    found = outcomes(run(sys.argv[1:]))
    total = sum(len(v) for v in found.values())
    failed = sum(s == "FAILED" for v in found.values() for s in v)
    body = [
        "# Reliability",
        "",
        "Generated by `.venv/bin/python -m tests.reliability.report` (do not edit by hand) on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: {total} tests, {failed} failed.",
        'Every test runs against the real stores named by the environment (see README, "Configuration"),',
        "faults injected by `tests/faultproxy.py`, a TCP proxy between the app and PostgreSQL, Redis",
        'or ClickHouse (reset, blackhole, latency, close after N bytes). "Data lost" is what the test',
        "asserts; a row passes only if it held.",
        "",
        *table(found),
        "",
        "Not covered yet: concurrency (an audit while writers change the same tables), load (50",
        "concurrent audits against the pool, a sustained minute, pool exhaustion), a network",
        "partition in the middle of a PostgreSQL query (a userspace proxy cannot stop TCP",
        "acknowledgements; `statement_timeout` covers a stalled server, not a silent network).",
        "",
    ]
    OUT.write_text("\n".join(body))
    print(f"wrote {OUT.relative_to(ROOT)}: {total} tests, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
