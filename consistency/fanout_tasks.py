"""Celery tasks of the fanned-out audit (``consistency.engine.fanout``).

Loaded by the worker through ``app.autodiscover_tasks(related_name="fanout_tasks")`` in
``project/celery.py``. ``audit_segment`` is acked late: it is idempotent (a segment is
claimed once and completed once, by its claimer), and a redelivery after its worker died
is how the segment gets done.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from celery import shared_task

from consistency.engine import fanout
from consistency.engine.declarations import Declaration
from consistency.engine.registry import registry
from consistency.engine.runner import AuditOptions, run_audit
from consistency.models import AuditRun
from consistency.sync import alerts
from consistency.sync.audits import SKIPPED_LOCKED, ScheduledAuditResult
from consistency.sync.locks import cache_lock


@shared_task(
    name="consistency.audit_segment",
    bind=True,
    acks_late=True,
    # Under the Redis visibility timeout (900 s), which would hand a longer task out again, and
    # under FANOUT_LEASE_SECONDS, so the coordinator never takes over a segment still being read.
    # A segment is a sixteenth of a side by default: a table that needs longer wants more segments.
    soft_time_limit=600,
    time_limit=660,
)
def audit_segment(self: Any, segment_id: int) -> str:
    """Scan (or locate in) one segment of a fanned-out audit, unless another worker has."""
    return fanout.work_on(segment_id, owner=f"task:{self.request.id}")


def fanout_audit(
    checks: Sequence[str] = (),
    *,
    min_rows: int | None = None,
    segments: int | None = None,
    settle: float | None = None,
    trigger: str = AuditRun.Trigger.SCHEDULE,
) -> ScheduledAuditResult:
    """A full audit of ``checks`` (all when empty) whose large row parity checks fan out;
    the same lock per check, run records and alerts as ``consistency.sync.audits.scheduled_audit``."""
    declarations = registry.select(checks)
    with ExitStack() as stack:
        chosen: list[Declaration] = []
        skipped: list[Declaration] = []
        for decl in declarations:
            (chosen if stack.enter_context(cache_lock(decl.name)) else skipped).append(decl)
        if not chosen:
            return ScheduledAuditResult(status=SKIPPED_LOCKED, skipped=[d.name for d in skipped])
        chosen = [fanout.fan_out(d, min_rows=min_rows, segments=segments) for d in chosen]
        run, _ = run_audit(chosen, AuditOptions(trigger=trigger, since=None, settle=settle))
    queued = alerts.notify_new_drift(run)
    return ScheduledAuditResult(
        status=run.status,
        run_id=run.pk,
        new_drift=queued[0].drift_count if queued else len(alerts.new_drift(run)),
        skipped=[d.name for d in skipped],
    )


@shared_task(name="consistency.fanout_audit", soft_time_limit=6 * 3600 - 300, time_limit=6 * 3600)
def fanout_audit_task(
    checks: list[str] | None = None,
    min_rows: int | None = None,
    segments: int | None = None,
    settle: float | None = None,
) -> dict[str, Any]:
    """A full audit whose large row parity checks fan out into ``consistency.audit_segment`` tasks."""
    return fanout_audit(checks or (), min_rows=min_rows, segments=segments, settle=settle).as_dict()
