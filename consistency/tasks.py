"""Celery tasks: thin wrappers over the sync services (``consistency.sync``).

``acks_late`` only where a redelivery is harmless: the relay, the export and the
repair are idempotent, an invalidation can repeat, an alert checks ``sent_at``. The
audit is not acked late: a worker lost mid-audit is covered by the next schedule.
An acked-late task's time limit stays under the Redis visibility timeout (900 s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import shared_task

from consistency.stores.errors import StoreError
from consistency.sync import alerts, analytics, audits, cache, outbox, relay


def _ask_for_help() -> Callable[[], None] | None:
    """A relay that finds a backlog queues one more relay task, so an idle worker joins in (and,
    finding a full batch too, asks again): one commit of many users still uses every worker.
    Not in-process (eager), where the extra task would run nested inside this one."""
    return None if relay_outbox.app.conf.task_always_eager else outbox.trigger_relay


@shared_task(name="consistency.relay_outbox", acks_late=True, soft_time_limit=120, time_limit=150)
def relay_outbox(limit: int | None = None) -> dict[str, int]:
    """Relay pending auth-user events (triggered after each commit on ``auth``)."""
    return relay.relay_pending(limit, max_batches=20, on_backlog=_ask_for_help()).__dict__


@shared_task(name="consistency.sweep_outbox", acks_late=True, soft_time_limit=240, time_limit=300)
def sweep_outbox() -> dict[str, int]:
    """The periodic sweep: relays whatever a lost trigger left behind."""
    return relay.relay_pending(on_backlog=_ask_for_help()).__dict__


@shared_task(
    name="consistency.export_analytics",
    acks_late=True,
    autoretry_for=(StoreError,),
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=False,
    max_retries=None,
    soft_time_limit=240,
    time_limit=300,
)
def export_analytics(limit: int | None = None) -> int:
    """Export pending message and tool-usage changes; retried with backoff while ClickHouse is down."""
    return analytics.export_pending(limit)


@shared_task(
    name="consistency.invalidate_cache_keys",
    acks_late=True,
    autoretry_for=(Exception,),
    retry_backoff=1,
    retry_backoff_max=60,
    max_retries=20,
    soft_time_limit=30,
    time_limit=60,
)
def invalidate_cache_keys(keys: list[str]) -> int:
    """Retry an invalidation that failed after commit."""
    cache.invalidate(keys)
    return len(keys)


@shared_task(name="consistency.scheduled_audit", soft_time_limit=6 * 3600 - 300, time_limit=6 * 3600)
def scheduled_audit(full: bool = False, checks: list[str] | None = None) -> dict[str, Any]:
    """An audit started by beat: incremental (``since="last"``) or full; skips locked checks."""
    return audits.scheduled_audit(full=full, checks=checks or ()).as_dict()


@shared_task(
    name="consistency.send_alert",
    acks_late=True,
    autoretry_for=(Exception,),
    retry_backoff=2,
    retry_backoff_max=600,
    max_retries=10,
    soft_time_limit=60,
    time_limit=90,
)
def send_alert(alert_id: int) -> bool:
    """Send one new-drift alert (mail or webhook) unless already sent."""
    return alerts.send(alert_id)


# --- drift review (the admin): each records its outcome in the repair log --------------


@shared_task(name="consistency.reverify_drift", soft_time_limit=3600 - 60, time_limit=3600)
def reverify_drift(drift_id: int, user_id: int | None = None) -> dict[str, Any]:
    """Check one drift again now (by key where the check can, else the whole check)."""
    from consistency.review import actions

    return actions.reverify(drift_id, user_id).__dict__


@shared_task(name="consistency.repair_drifts", acks_late=True, soft_time_limit=780, time_limit=840)
def repair_drifts(drift_ids: list[int], user_id: int | None = None) -> list[dict[str, Any]]:
    """Plan and apply the repair of drift records chosen in the admin, then re-verify each.

    Acked late: a worker lost mid-repair leaves the task to be redelivered, and the rerun is
    harmless (``actions.repair``: only drift still active is planned, the actions are idempotent,
    and each check's repair is recorded whole or not at all). Its time limit stays under the
    Redis visibility timeout (900 s), so a repair still running is never handed out twice."""
    from consistency.review import actions

    logs = actions.repair(drift_ids, user_id)
    return [{"key": log.key, "action": log.action, "verified": log.verified} for log in logs]


@shared_task(name="consistency.admin_audit", soft_time_limit=6 * 3600 - 300, time_limit=6 * 3600)
def admin_audit(checks: list[str] | None = None, user_id: int | None = None) -> dict[str, Any]:
    """A full audit started from the admin's dashboard; checks locked by another audit skip."""
    from consistency.review import actions

    return actions.audit_now(checks or (), user_id)
