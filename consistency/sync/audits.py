"""Scheduled audits: one lock per check, so two overlapping audits never run the same check."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

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


def scheduled_audit(*, full: bool, checks: Sequence[str] = ()) -> ScheduledAuditResult:
    """Audit ``checks`` (all when empty) whose lock is free; alert on new drift without waiting."""
    declarations = registry.select(checks)
    with ExitStack() as stack:
        chosen: list[Declaration] = []
        skipped: list[Declaration] = []
        for decl in declarations:
            (chosen if stack.enter_context(cache_lock(decl.name)) else skipped).append(decl)
        if not chosen:
            return ScheduledAuditResult(status=SKIPPED_LOCKED, skipped=[d.name for d in skipped])
        options = AuditOptions(trigger=AuditRun.Trigger.SCHEDULE, since=None if full else "last")
        run, _ = run_audit(chosen, options)
    queued = alerts.notify_new_drift(run)
    return ScheduledAuditResult(
        status=run.status,
        run_id=run.pk,
        new_drift=queued[0].drift_count if queued else len(alerts.new_drift(run)),
        skipped=[d.name for d in skipped],
    )
