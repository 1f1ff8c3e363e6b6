"""Run an audit: execute checks, record the run and its findings.

The management command, the Celery tasks and the admin all call ``run_audit``.
A check that raises (a store down, a statement timeout) is recorded as failed
and fails the run: a failure is never reported as 'no drift'.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from consistency.conf import app_settings
from consistency.engine.declarations import (
    Declaration,
)
from consistency.engine.findings import AuditContext, CheckResult, Finding
from consistency.engine.redact import mask_urls, redact
from consistency.models import AuditRun, CheckRun, Drift
from consistency.stores.errors import describe_failure

logger = logging.getLogger("consistency.audit")

ProgressFactory = Callable[[Declaration], Callable[[int], None] | None]


@dataclass(frozen=True)
class AuditOptions:
    settle: float | None = None  # None: CONSISTENCY["SETTLE_SECONDS"]
    since: dt.datetime | str | None = None  # a time, "last", or None for a full audit
    trigger: str = AuditRun.Trigger.COMMAND


def resolve_since(decl: Declaration, since: dt.datetime | str | None) -> dt.datetime | None:
    """The lower bound of an incremental audit of ``decl``; None means a full audit."""
    if since is None or not decl.supports_incremental:
        return None
    if isinstance(since, dt.datetime):
        return since
    last = (
        CheckRun.objects.filter(check_name=decl.name, status__in=["ok", "drift"], watermark__isnull=False)
        .order_by("-watermark")
        .values_list("watermark", flat=True)
        .first()
    )
    if last is None:
        return None  # never audited: the first audit is a full one
    return last - dt.timedelta(seconds=app_settings.INCREMENTAL_MARGIN_SECONDS)


def run_check(decl: Declaration, ctx: AuditContext) -> CheckResult:
    """Run one check; exceptions propagate to the caller."""
    findings, figures = decl.audit(ctx)
    figures = dict(figures)
    result = CheckResult(name=decl.name, kind=decl.kind, compared=int(figures.pop("compared", 0)))
    result.figures = figures
    result.findings = [_redacted(f, decl) for f in findings]
    result.status = "drift" if result.findings else "ok"
    return result


def _redacted(finding: Finding, decl: Declaration) -> Finding:
    extra = getattr(decl, "secret", ())
    return Finding(
        check=finding.check,
        kind=finding.kind,
        key=finding.key,
        fields=finding.fields,
        source=redact(finding.source, extra),
        target=redact(finding.target, extra),
        detail=mask_urls(finding.detail),
    )


def run_audit(
    declarations: Sequence[Declaration],
    options: AuditOptions | None = None,
    progress_for: ProgressFactory | None = None,
) -> tuple[AuditRun, list[CheckResult]]:
    """Run ``declarations`` in order and record everything; return the run and its results."""
    options = options or AuditOptions()
    settle = app_settings.SETTLE_SECONDS if options.settle is None else options.settle
    run = AuditRun.objects.create(
        trigger=options.trigger,
        checks=[d.name for d in declarations],
        mode="incremental" if options.since else "full",
        since=options.since if isinstance(options.since, dt.datetime) else None,
    )
    results: list[CheckResult] = []
    for decl in declarations:
        began = time.monotonic()
        since = None
        try:
            # Inside the try: its watermark query and margin setting can fail like the check.
            since = resolve_since(decl, options.since)
            ctx = AuditContext(
                started_at=run.started_at,
                settle=settle,
                since=since,
                progress=progress_for(decl) if progress_for else None,
            )
            result = run_check(decl, ctx)
        except Exception as exc:
            message = mask_urls(describe_failure(exc))  # names the store that failed
            logger.error("check %s failed: %s", decl.name, message)
            result = CheckResult(name=decl.name, kind=decl.kind, status="error", error=message)
        result.duration = time.monotonic() - began
        results.append(result)
        _record(run, decl, result, incremental=since is not None)
    statuses = {r.status for r in results}
    run.status = "error" if "error" in statuses else "drift" if "drift" in statuses else "ok"
    run.finished_at = timezone.now()
    run.error = "\n".join(f"{r.name}: {r.error}" for r in results if r.error)
    run.save(update_fields=["status", "finished_at", "error"])
    return run, results


_CONTENT_FIELDS = ("fields", "source", "target", "detail")


def _record(run: AuditRun, decl: Declaration, result: CheckResult, *, incremental: bool) -> None:
    """Store the check's figures and fold its findings into the drift records."""
    with transaction.atomic():
        CheckRun.objects.create(
            run=run,
            check_name=decl.name,
            kind=decl.kind,
            status=result.status,
            compared=result.compared,
            segments=result.figures.get("segments", 0),
            rows_fetched=result.figures.get("rows_fetched", 0),
            in_flight=result.figures.get("in_flight", 0),
            drift_count=result.drift_count,
            duration=result.duration,
            watermark=run.started_at if result.status != "error" else None,
            error=result.error or "",
            strategy=str(result.figures.get("strategy", ""))[:64],
            figures=json.loads(json.dumps(result.figures, default=str)),
        )
        if result.status == "error":
            return  # a failed check says nothing about its drift: leave the records untouched
        now = timezone.now()
        found = {
            (f.key, f.kind): {
                "fields": list(f.fields),
                "source": f.source,
                "target": f.target,
                "detail": f.detail,
            }
            for f in result.findings
        }
        seen_again = _fold_existing(decl, found)
        created = [
            Drift(
                check_name=decl.name,
                kind=kind,
                key=key,
                **content,
                severity=str(decl.severity),
                store=decl.store,
                last_seen=now,
                last_run=run,
                first_seen=now,
                first_run=run,
            )
            for (key, kind), content in found.items()
            if (key, kind) not in seen_again
        ]
        # A record another audit of the same check inserted meanwhile conflicts; it is folded
        # in below like one seen again.
        Drift.objects.bulk_create(created, batch_size=1000, ignore_conflicts=True)
        if created:
            raced = Drift.objects.filter(check_name=decl.name, key__in=[d.key for d in created])
            seen_again |= _fold_existing(decl, found, raced.exclude(last_run=run))
        _mark_seen_again(decl, sorted(seen_again.values()), run, now)
        if not incremental:
            # A full audit that no longer sees a drift has shown it resolved.
            gone = Drift.objects.filter(check_name=decl.name).exclude(
                status__in=[Drift.Status.RESOLVED, Drift.Status.REPAIRED]
            )
            stale = [
                pk for pk, key, kind in gone.values_list("pk", "key", "kind") if (key, kind) not in found
            ]
            Drift.objects.filter(pk__in=stale).update(status=Drift.Status.RESOLVED, resolved_at=now)


def _fold_existing(
    decl: Declaration,
    found: Mapping[tuple[str, str], Mapping[str, Any]],
    records: QuerySet[Drift] | None = None,
) -> dict[tuple[str, str], int]:
    """The records among ``records`` (default: this check's records of the found keys) that
    ``found`` sees again, by (key, kind) to pk; a record whose content changed is rewritten.

    Only a changed record costs a per-row update; one seen again as it was (the steady state of
    a drift nobody repaired yet) is touched by the shared update in ``_mark_seen_again``.
    """
    if records is None:
        keys = sorted({key for key, _ in found})
        records = Drift.objects.filter(check_name=decl.name)
        batches = [records.filter(key__in=keys[i : i + 1000]) for i in range(0, len(keys), 1000)]
    else:
        batches = [records]
    matched: dict[tuple[str, str], int] = {}
    rewritten: list[Drift] = []
    # Plain rows, not model instances: a steady audit reads back every drift it sees again.
    for batch in batches:
        for pk, key, kind, *stored in batch.values_list("pk", "key", "kind", *_CONTENT_FIELDS):
            content = found.get((key, kind))
            if content is None:
                continue
            matched[(key, kind)] = pk
            # Compared as stored: JSON has no tuples and only string object keys.
            if any(
                old != json.loads(json.dumps(content[name]))
                for name, old in zip(_CONTENT_FIELDS, stored, strict=True)
            ):
                rewritten.append(Drift(pk=pk, **content))
    Drift.objects.bulk_update(rewritten, _CONTENT_FIELDS, batch_size=500)
    return matched


def _mark_seen_again(decl: Declaration, pks: list[int], run: AuditRun, now: dt.datetime) -> None:
    """One UPDATE a batch for what every record seen again shares; a resolved, repaired or
    expired-mute record opens again."""
    for start in range(0, len(pks), 1000):
        batch = Drift.objects.filter(pk__in=pks[start : start + 1000])
        batch.update(
            severity=str(decl.severity),
            store=decl.store,
            last_seen=now,
            last_run=run,
            times_seen=F("times_seen") + 1,
        )
        batch.filter(status__in=[Drift.Status.RESOLVED, Drift.Status.REPAIRED]).update(
            status=Drift.Status.OPEN, resolved_at=None
        )
        batch.filter(status=Drift.Status.MUTED, muted_until__lte=now).update(status=Drift.Status.OPEN)
