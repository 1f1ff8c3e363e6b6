"""Tell people when a scheduled audit finds new drift: by mail and to a webhook, once each.

New drift is drift first recorded by this run (``Drift.first_run``): drift that was
already open, acknowledged or muted is not new. Each channel gets one ``Alert``
row per run; its task sends it, retries on failure, and does nothing once sent.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from consistency.models import Alert, AuditRun, Drift
from consistency.sync.conf import sync_setting

logger = logging.getLogger("consistency.sync.alerts")
MAX_LISTED = 100


def new_drift(run: AuditRun) -> list[Drift]:
    """Drift records this run created (open ones; muted or acknowledged ones are not news)."""
    return list(Drift.objects.filter(first_run=run, status=Drift.Status.OPEN).order_by("check_name", "key"))


def channels() -> list[str]:
    """The configured channels."""
    found = []
    if sync_setting("ALERT_EMAILS"):
        found.append("mail")
    if sync_setting("ALERT_WEBHOOK_URL"):
        found.append("webhook")
    return found


def notify_new_drift(run: AuditRun) -> list[Alert]:
    """Create one alert per channel for ``run`` (if it found new drift) and enqueue its sending.

    Never raises: a broker or database hiccup here must not fail the audit.
    """
    drifts = new_drift(run)
    if not drifts:
        return []
    from consistency.tasks import send_alert

    alerts = []
    for channel in channels():
        try:
            alert, _ = Alert.objects.get_or_create(
                run=run, channel=channel, defaults={"drift_count": len(drifts)}
            )
            send_alert.apply_async((alert.pk,), retry=False)
            alerts.append(alert)
        except Exception as exc:
            logger.warning("could not queue the %s alert for run %s: %s", channel, run.pk, type(exc).__name__)
    return alerts


def alert_body(run: AuditRun) -> dict[str, Any]:
    """The JSON body of the webhook (drift keys and kinds, never field values)."""
    drifts = new_drift(run)
    return {
        "run": run.pk,
        "status": run.status,
        "mode": run.mode,
        "started_at": run.started_at.isoformat(),
        "new_drift": len(drifts),
        "drifts": [
            {"check": d.check_name, "kind": d.kind, "key": d.key, "severity": d.severity}
            for d in drifts[:MAX_LISTED]
        ],
    }


def _mail(run: AuditRun, body: dict[str, Any]) -> None:
    lines = [f"{d['check']}: {d['kind']} {d['key']} ({d['severity']})" for d in body["drifts"]]
    more = body["new_drift"] - len(lines)
    text = "\n".join([f"Audit run {run.pk} found {body['new_drift']} new drift(s):", "", *lines])
    if more > 0:
        text += f"\n... and {more} more"
    send_mail(
        f"[consistency] {body['new_drift']} new drift(s) in audit run {run.pk}",
        text,
        None,
        list(sync_setting("ALERT_EMAILS")),
    )


def _webhook(body: dict[str, Any]) -> None:
    request = urllib.request.Request(  # noqa: S310 - the URL is the operator's setting
        str(sync_setting("ALERT_WEBHOOK_URL")),
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=float(sync_setting("ALERT_WEBHOOK_TIMEOUT"))) as response:  # noqa: S310
        response.read()


def send(alert_id: int) -> bool:
    """Send one alert unless already sent; raises on failure (the task retries). True if sent now."""
    try:
        with transaction.atomic():
            alert = Alert.objects.select_for_update().select_related("run").get(pk=alert_id)
            if alert.sent_at is not None:
                return False
            body = alert_body(alert.run)
            if alert.channel == "mail":
                _mail(alert.run, body)
            else:
                _webhook(body)
            Alert.objects.filter(pk=alert_id).update(
                sent_at=timezone.now(), attempts=F("attempts") + 1, error=""
            )
    except Exception as exc:
        Alert.objects.filter(pk=alert_id).update(attempts=F("attempts") + 1, error=type(exc).__name__)
        raise
    return True
