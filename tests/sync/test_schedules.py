"""Beat schedules installed once, audit locks, and alerts on new drift."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from io import StringIO
from typing import Any

import pytest
from django.core import mail
from django.core.management import call_command
from django.test import override_settings
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from consistency.auth_service.models import AuthUser
from consistency.models import Alert
from consistency.sync.audits import SKIPPED_LOCKED, scheduled_audit
from consistency.sync.locks import cache_lock
from consistency.tasks import scheduled_audit as scheduled_audit_task
from tests.sync.conftest import sync_db, wait_until

pytestmark = sync_db


def test_installschedules__twice_creates_nothing_new() -> None:
    out = StringIO()
    call_command("installschedules", stdout=out)
    assert "4 created, 0 already installed" in out.getvalue()
    counts = (PeriodicTask.objects.count(), IntervalSchedule.objects.count(), CrontabSchedule.objects.count())
    call_command("installschedules", stdout=(second := StringIO()))
    assert "0 created, 4 already installed" in second.getvalue()
    assert (
        PeriodicTask.objects.count(),
        IntervalSchedule.objects.count(),
        CrontabSchedule.objects.count(),
    ) == counts
    tasks = dict(PeriodicTask.objects.values_list("name", "task"))
    assert tasks["consistency: outbox sweep"] == "consistency.sweep_outbox"
    incremental = PeriodicTask.objects.get(name="consistency: incremental audit")
    assert (incremental.interval.every, json.loads(incremental.kwargs)) == (600, {"full": False})
    assert PeriodicTask.objects.get(name="consistency: full audit").crontab.hour == "3"


def test_scheduled_audit__an_overlapping_audit_of_the_same_check_skips() -> None:
    with cache_lock("users") as held:
        assert held is True
        result = scheduled_audit(full=True, checks=["users"])
        assert result.status == SKIPPED_LOCKED
        assert result.skipped == ["users"]
    assert scheduled_audit(full=True, checks=["users"]).status == "ok"


class _Hook(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []
    fail_first = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if _Hook.fail_first > 0:
            _Hook.fail_first -= 1
            self.send_response(500)
        else:
            _Hook.bodies.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 that fails its first request, then records bodies."""
    _Hook.bodies, _Hook.fail_first = [], 1
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def test_alerts__new_drift_notifies_once_by_mail_and_webhook(worker: object, webhook: str) -> None:
    # bulk_create sends no signal and no outbox event: the backend never hears of these users.
    AuthUser.objects.bulk_create([AuthUser(id=f"u-miss{i}", email=f"miss{i}@corp.io") for i in range(2)])
    config = {"SETTLE_SECONDS": 0.0, "ALERT_EMAILS": ["ops@corp.io"], "ALERT_WEBHOOK_URL": webhook}
    with override_settings(CONSISTENCY=config):
        scheduled_audit_task.delay(full=True, checks=["users"])
        wait_until(lambda: Alert.objects.filter(sent_at__isnull=False).count() == 2, what="alerts sent")
        assert len(mail.outbox) == 1
        assert mail.outbox[0].to == ["ops@corp.io"]
        assert "2 new drift(s)" in mail.outbox[0].subject
        assert len(_Hook.bodies) == 1
        assert (_Hook.bodies[0]["new_drift"], {d["key"] for d in _Hook.bodies[0]["drifts"]}) == (
            2,
            {"u-miss0", "u-miss1"},
        )
        assert Alert.objects.get(channel="webhook").attempts == 2  # failed once, retried

        # The same drift seen again is not new: no second alert.
        second = scheduled_audit(full=True, checks=["users"])
        assert (second.status, second.new_drift) == ("drift", 0)
        assert Alert.objects.count() == 2
        assert len(mail.outbox) == 1
