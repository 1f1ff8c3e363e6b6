"""Celery tasks of the fanned-out audit (``consistency.engine.fanout``).

Loaded by the worker through ``app.autodiscover_tasks(related_name="fanout_tasks")`` in
``project/celery.py``. ``audit_segment`` is acked late: it is idempotent (a segment is
claimed once and completed once, by its claimer), and a redelivery after its worker died
is how the segment gets done.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import shared_task

from consistency.engine import fanout
from consistency.sync.audits import ScheduledAuditResult, scheduled_audit


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
) -> ScheduledAuditResult:
    """A full audit of ``checks`` (all when empty) whose large row parity checks fan out whatever
    the number of workers: ``scheduled_audit`` with ``fan_out=True``, same lock, records, alerts."""
    return scheduled_audit(
        full=True, checks=checks, fan_out=True, min_rows=min_rows, segments=segments, settle=settle
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
