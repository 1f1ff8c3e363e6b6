"""``manage.py checkconsistency``: audit the stores; exit 0 parity, 1 drift, 2 error."""

from __future__ import annotations

import datetime as dt
import getpass
import math
import sys
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.utils.dateparse import parse_datetime

from consistency.conf import problems
from consistency.engine import repair as repairs
from consistency.engine.declarations import Declaration, DeclarationError, Severity
from consistency.engine.findings import CheckResult
from consistency.engine.redact import mask_urls
from consistency.engine.registry import registry
from consistency.engine.report import RENDERERS
from consistency.engine.runner import AuditOptions, run_audit
from consistency.models import AuditRun
from consistency.stores.errors import describe_error, describe_failure, store_of


def _since(value: str) -> dt.datetime | str:
    if value == "last":
        return value
    parsed = parse_datetime(value)
    if parsed is None:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise CommandError(
                f"--since {value!r}: expected 'last' or an ISO-8601 time", returncode=2
            ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class Command(BaseCommand):
    help = "Audit the stores for drift: exit 0 when they agree, 1 when drift is found, 2 on an error."
    # A diagnostic must run when the system checks fail (that is when it is needed most).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("checks", nargs="*", metavar="CHECK", help="checks to run (default: all)")
        parser.add_argument("--tag", action="append", default=[], help="run only checks with this tag")
        parser.add_argument("--list", action="store_true", help="list the declared checks and exit")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--since", help="incremental: rows changed since a time, or 'last' watermark")
        mode.add_argument("--full", action="store_true", help="compare every row (the default)")
        parser.add_argument("--format", choices=sorted(RENDERERS), default="text")
        parser.add_argument("--output", help="write the report to this file instead of standard output")
        parser.add_argument(
            "--limit", type=int, default=None, help="drifts listed per check (counts stay exact)"
        )
        parser.add_argument("--repair", action="store_true", help="print the repair plan; change nothing")
        parser.add_argument("--execute", action="store_true", help="with --repair: apply the plan")
        parser.add_argument(
            "--fail-on",
            choices=[s.value for s in Severity],
            default=Severity.INFO.value,
            help="exit 1 only for drift at or above this severity (default: info)",
        )
        parser.add_argument(
            "--settle",
            type=float,
            default=None,
            help="seconds to wait before re-reading candidates (default: CONSISTENCY setting)",
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["execute"] and not options["repair"]:
            raise CommandError("--execute goes with --repair", returncode=2)
        if options["settle"] is not None and not (
            math.isfinite(options["settle"]) and options["settle"] >= 0
        ):
            raise CommandError("--settle must be a finite number of seconds, zero or more", returncode=2)
        if found := problems():  # the command skips Django's system checks (consistency.E004)
            raise CommandError("invalid settings: " + "; ".join(found), returncode=2)
        if options["limit"] is not None and options["limit"] < 0:
            raise CommandError("--limit must be zero or more drifts", returncode=2)
        try:
            chosen = registry.select(options["checks"], options["tag"])
        except KeyError as exc:
            known = ", ".join(d.name for d in registry)
            raise CommandError(
                f"unknown check(s): {exc.args[0]}. Known checks: {known}", returncode=2
            ) from exc
        if options["list"]:
            self._list(chosen)
            return
        if not chosen:
            raise CommandError(f"no check matches tags {options['tag']}", returncode=2)
        for decl in chosen:
            try:
                decl.validate()
            except DeclarationError as exc:
                raise CommandError(f"invalid declaration: {exc}", returncode=2) from exc
        since = _since(options["since"]) if options["since"] else None
        progress_for = self._progress_factory(options)
        try:
            run, results = run_audit(
                chosen, AuditOptions(settle=options["settle"], since=since), progress_for
            )
        except DatabaseError as exc:
            # The run itself could not be recorded: the default database is down.
            raise CommandError(
                f"cannot record the audit in the 'default' database: {mask_urls(describe_error(exc))}",
                returncode=2,
            ) from exc
        self._write(run, results, options)
        if options["repair"] and run.status != AuditRun.Status.ERROR:
            self._repair(chosen, results, execute=options["execute"])
        if run.status == AuditRun.Status.ERROR:
            failed = "; ".join(f"{r.name}: {r.error}" for r in results if r.status == "error")
            raise CommandError(f"audit run {run.pk} failed: {failed}", returncode=2)
        threshold = Severity(options["fail_on"]).rank
        by_name = {d.name: d for d in chosen}
        if any(r.findings and by_name[r.name].severity.rank >= threshold for r in results):
            raise CommandError(f"drift found in run {run.pk}", returncode=1)

    def _list(self, chosen: list[Declaration]) -> None:
        width = max((len(d.name) for d in chosen), default=10)
        self.stdout.write(f"{'check':<{width}}  {'kind':<9} {'store':<10} {'severity':<8} tags")
        for d in chosen:
            self.stdout.write(
                f"{d.name:<{width}}  {d.kind:<9} {d.store:<10} {d.severity.value:<8} {','.join(d.tags)}"
            )

    def _progress_factory(
        self, options: dict[str, Any]
    ) -> Callable[[Declaration], Callable[[int], None] | None]:
        enabled = not options["no_progress"] and sys.stderr.isatty()

        def factory(decl: Declaration) -> Callable[[int], None] | None:
            if not enabled:
                return None
            from tqdm import tqdm  # only on a terminal: a scripted run does not import it

            bar = tqdm(desc=decl.name, unit=" rows", unit_scale=True, file=sys.stderr, leave=False)
            return bar.update

        return factory

    def _write(self, run: AuditRun, results: list[CheckResult], options: dict[str, Any]) -> None:
        renderer = RENDERERS[options["format"]]
        limit = options["limit"]
        if options["format"] == "text" and limit is None:
            limit = 20
        report = renderer(run, results, limit)
        if options["output"]:
            try:
                with open(options["output"], "w", encoding="utf-8") as fh:
                    fh.write(report)
            except OSError as exc:
                raise CommandError(f"--output {options['output']}: {exc.strerror}", returncode=2) from exc
        else:
            self.stdout.write(report, ending="")

    def _repair(self, chosen: list[Declaration], results: list[CheckResult], *, execute: bool) -> None:
        by_name = {d.name: d for d in chosen}
        out = self.stderr if self.stdout is None else self.stdout
        for result in results:
            decl = by_name[result.name]
            actions = repairs.plan(decl, result.findings)
            if not result.findings:
                continue
            if not actions:
                out.write(f"{decl.name}: no repair declared for {result.drift_count} drift")
                continue
            verb = "Applying" if execute else "Plan (dry run, nothing changed)"
            out.write(f"{verb}: {decl.name}, {len(actions)} action(s)")
            for action in actions:
                out.write(f"  {action.describe()}")
            if execute:
                try:
                    logs = repairs.execute(decl, actions, performed_as=getpass.getuser())
                except repairs.RepairNotRecorded as exc:
                    cause = exc.__cause__ or exc
                    raise CommandError(
                        f"repair of {decl.name} was applied, but recording it failed: "
                        f"{mask_urls(describe_failure(cause))}. Its drift records stay open; "
                        "the next audit finds the repaired keys in agreement and resolves them.",
                        returncode=2,
                    ) from exc
                except Exception as exc:
                    if not store_of(exc):
                        raise
                    raise CommandError(
                        f"repair of {decl.name} stopped: {mask_urls(describe_failure(exc))}. "
                        "Its database transaction was rolled back; rerun to complete it.",
                        returncode=2,
                    ) from exc
                ok = sum(1 for log in logs if log.verified)
                out.write(f"  repaired and re-verified {ok} of {len(logs)}")
