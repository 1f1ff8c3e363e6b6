"""A drift's history: the runs that saw it, and the schedule that started each run.

Both are recorded by signal receivers (connected from ``ConsistencyConfig.ready``)
so the engine and the sync tasks stay as they are:

- when an audit run is saved finished, every drift whose ``last_run`` is that run
  gets a ``DriftSighting`` for it, in one ``INSERT ... SELECT``; if the run began on an
  earlier day, the dashboard's cached count of that day is recounted;
- when django-celery-beat starts ``consistency.scheduled_audit``, the message carries
  the ``periodic_task_name`` header; after the task, its run records that name.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from celery.signals import task_postrun
from django.db import connections
from django.db.models.signals import post_save
from django.utils import timezone

from consistency.models import AuditRun, Drift, DriftSighting
from consistency.review import dashboard

SCHEDULED_TASKS = ("consistency.scheduled_audit",)


def record_sightings(run: AuditRun, using: str = "default") -> int:
    """Record a sighting for every drift last seen by ``run``; idempotent. Returns rows added."""
    sql = (
        f"INSERT INTO {DriftSighting._meta.db_table} (drift_id, run_id) "
        f"SELECT id, last_run_id FROM {Drift._meta.db_table} WHERE last_run_id = %s "
        "ON CONFLICT (drift_id, run_id) DO NOTHING"
    )
    with connections[using].cursor() as cursor:
        cursor.execute(sql, [run.pk])
        return max(cursor.rowcount, 0)


def run_saved(sender: type[AuditRun], instance: AuditRun, using: str, **kwargs: Any) -> None:
    if kwargs.get("raw") or instance.finished_at is None:
        return
    record_sightings(instance, using)
    day = instance.started_at.astimezone(dt.UTC).date()
    if day < timezone.now().astimezone(dt.UTC).date():
        dashboard.refresh_day(day)  # a run that began on an earlier day: its day's count changed


def schedule_name(request: Any) -> str:
    """The PeriodicTask name django-celery-beat put in the task message's headers, if any."""
    name = getattr(request, "periodic_task_name", None)
    if not name:
        name = (getattr(request, "headers", None) or {}).get("periodic_task_name")
    return str(name or "")


def task_finished(sender: Any = None, retval: Any = None, **kwargs: Any) -> None:
    if getattr(sender, "name", None) not in SCHEDULED_TASKS or not isinstance(retval, dict):
        return
    name = schedule_name(getattr(sender, "request", None))
    if name and retval.get("run"):
        AuditRun.objects.filter(pk=retval["run"]).update(schedule=name)


def connect() -> None:
    post_save.connect(run_saved, sender=AuditRun, dispatch_uid="consistency.review.run_saved")
    task_postrun.connect(task_finished, dispatch_uid="consistency.review.task_finished", weak=False)
