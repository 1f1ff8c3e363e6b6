"""The default Celery beat schedules, installed idempotently into django-celery-beat's tables.

An installed schedule is matched by name and never overwritten, so edits made
in the admin survive re-installation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask


@dataclass(frozen=True)
class Schedule:
    """One periodic task: an interval in seconds or a daily time (UTC)."""

    name: str
    task: str
    kwargs: dict[str, Any]
    every_seconds: int | None = None
    daily_at: tuple[int, int] | None = None  # (hour, minute)


DEFAULT_SCHEDULES: tuple[Schedule, ...] = (
    Schedule(
        "consistency: incremental audit", "consistency.scheduled_audit", {"full": False}, every_seconds=600
    ),
    Schedule("consistency: full audit", "consistency.scheduled_audit", {"full": True}, daily_at=(3, 0)),
    Schedule("consistency: outbox sweep", "consistency.sweep_outbox", {}, every_seconds=5),
    Schedule("consistency: analytics export sweep", "consistency.export_analytics", {}, every_seconds=30),
)


def _interval(seconds: int) -> IntervalSchedule:
    found = IntervalSchedule.objects.filter(every=seconds, period=IntervalSchedule.SECONDS).first()
    return found or IntervalSchedule.objects.create(every=seconds, period=IntervalSchedule.SECONDS)


def _crontab(hour: int, minute: int) -> CrontabSchedule:
    values = {
        "minute": str(minute),
        "hour": str(hour),
        "day_of_week": "*",
        "day_of_month": "*",
        "month_of_year": "*",
        "timezone": "UTC",
    }
    return CrontabSchedule.objects.filter(**values).first() or CrontabSchedule.objects.create(**values)


def install_schedules(schedules: tuple[Schedule, ...] = DEFAULT_SCHEDULES) -> list[str]:
    """Create the periodic tasks that do not exist yet (by name); return the names created."""
    created = []
    for schedule in schedules:
        if PeriodicTask.objects.filter(name=schedule.name).exists():
            continue
        when: dict[str, Any] = (
            {"interval": _interval(schedule.every_seconds)}
            if schedule.every_seconds
            else {"crontab": _crontab(*(schedule.daily_at or (3, 0)))}
        )
        # get_or_create: the name is unique, so a concurrent installer cannot add a second one.
        _, made = PeriodicTask.objects.get_or_create(
            name=schedule.name,
            defaults={"task": schedule.task, "kwargs": json.dumps(schedule.kwargs), **when},
        )
        if made:
            created.append(schedule.name)
    return created
