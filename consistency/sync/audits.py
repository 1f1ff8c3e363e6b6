"""Scheduled audits: one lock per check, so two overlapping audits never run the same check."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

from consistency.conf import app_settings
from consistency.engine import fanout
from consistency.engine.declarations import Declaration
from consistency.engine.registry import registry
from consistency.engine.runner import AuditOptions, run_audit
from consistency.models import AuditRun
from consistency.sync import alerts
from consistency.sync.locks import cache_lock

SKIPPED_LOCKED = "skipped: locked"


@dataclass(frozen=True)
class ScheduledAuditResult:
    """How a scheduled audit ended: the run's status (or SKIPPED_LOCKED), its id, new drift."""

    status: str
    run_id: int | None = None
    new_drift: int = 0
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "run": self.run_id,
            "new_drift": self.new_drift,
            "skipped": self.skipped,
        }


def workers_online(timeout: float = 1.0) -> int:
    """How many Celery workers answer a ping within ``timeout`` seconds (0 with no broker)."""
    from project.celery import app

    if app.conf.task_always_eager:
        return 0
    try:
        return len(app.control.ping(timeout=timeout) or [])
    except Exception:  # a broker that is down: nobody to fan out to
        return 0


def scheduled_audit(
    *,
    full: bool,
    checks: Sequence[str] = (),
    fan_out: bool | None = None,
    min_rows: int | None = None,
    segments: int | None = None,
    settle: float | None = None,
) -> ScheduledAuditResult:
    """Audit ``checks`` (all when empty) whose lock is free; alert on new drift without waiting.

    A full audit fans its large row parity checks out into segment tasks
    (``consistency.engine.fanout``) when ``fan_out`` is true, or, when it is None, when at
    least ``FANOUT_MIN_WORKERS`` workers answer a ping: one worker alone is faster without.
    """
    declarations = registry.select(checks)
    with ExitStack() as stack:
        chosen: list[Declaration] = []
        skipped: list[Declaration] = []
        for decl in declarations:
            (chosen if stack.enter_context(cache_lock(decl.name)) else skipped).append(decl)
        if not chosen:
            return ScheduledAuditResult(status=SKIPPED_LOCKED, skipped=[d.name for d in skipped])
        if full and fan_out is None:
            fan_out = workers_online() >= app_settings.FANOUT_MIN_WORKERS
        if full and fan_out:
            chosen = [fanout.fan_out(d, min_rows=min_rows, segments=segments) for d in chosen]
        options = AuditOptions(
            trigger=AuditRun.Trigger.SCHEDULE, since=None if full else "last", settle=settle
        )
        run, _ = run_audit(chosen, options)
    queued = alerts.notify_new_drift(run)
    return ScheduledAuditResult(
        status=run.status,
        run_id=run.pk,
        new_drift=queued[0].drift_count if queued else len(alerts.new_drift(run)),
        skipped=[d.name for d in skipped],
    )
