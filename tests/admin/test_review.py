"""The drift review admin through Django's test client: pages, actions, permissions, the trail."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from consistency import tasks
from consistency.backend.models import User as BackendUser
from consistency.engine.registry import registry
from consistency.engine.runner import AuditOptions, run_audit
from consistency.models import AuditRun, Drift, DriftSighting, RepairLog
from consistency.sync.schedules import install_schedules
from tests.admin.conftest import (
    PASSWORD,
    SOURCE_HASH,
    TARGET_HASH,
    UsersDrift,
    staff,
)

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "auth"])


def login(user: User) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


def url(name: str, *args: object) -> str:
    return reverse(f"admin:consistency_drift_{name}", args=args)


def test_detail__shows_both_sides__highlights_the_differing_field__never_a_secret(
    users_drift: UsersDrift, reviewer: User
) -> None:
    drift = users_drift.drift(users_drift.repaired_id)
    # A record written before redaction existed must not leak through the admin either.
    Drift.objects.filter(pk=drift.pk).update(
        source={**(drift.source or {}), "hashed_password": SOURCE_HASH},
        target={**(drift.target or {}), "hashed_password": TARGET_HASH},
    )
    page = login(reviewer).get(url("change", drift.pk)).content.decode()
    assert 'data-field="full_name"' in page
    row = page.split('data-field="full_name"')[0].rsplit("<tr", 1)[1]
    assert "consistency-differs" in row
    email_row = page.split('data-field="email"')[0].rsplit("<tr", 1)[1]
    assert "consistency-differs" not in email_row
    assert users_drift.source_name in page
    assert users_drift.target_name in page
    assert SOURCE_HASH not in page
    assert TARGET_HASH not in page
    assert "&lt;redacted&gt;" in page
    assert f"run {users_drift.run.pk}" in page  # history: first seen, and the sighting


def test_acknowledge__refused_without_review_drift__then_recorded_in_both_logs(
    users_drift: UsersDrift, reviewer: User
) -> None:
    viewer = staff("viewer", ["view_drift", "view_auditrun"])
    drift = users_drift.drift(users_drift.acked_id)
    assert login(viewer).post(url("acknowledge", drift.pk)).status_code == 403
    assert Drift.objects.get(pk=drift.pk).status == Drift.Status.OPEN

    response = login(reviewer).post(url("acknowledge", drift.pk))
    assert response.status_code == 302
    assert Drift.objects.get(pk=drift.pk).status == Drift.Status.ACKNOWLEDGED
    log = RepairLog.objects.get(drift=drift, action="acknowledge")
    assert log.performed_by == reviewer
    entry = LogEntry.objects.get(object_id=str(drift.pk))
    assert (entry.user, entry.get_change_message()) == (reviewer, "Acknowledged")


def test_mute__names_a_bad_date_and_a_missing_reason__then_mutes_until_the_date(
    users_drift: UsersDrift, reviewer: User
) -> None:
    client = login(reviewer)
    drift = users_drift.drift(users_drift.acked_id)
    today = timezone.now().date()
    page = client.post(url("mute", drift.pk), {"until": today.isoformat(), "reason": " "}).content.decode()
    assert f"{today.isoformat()} is not after today" in page
    assert "reason: This field is required." in page
    assert Drift.objects.get(pk=drift.pk).status == Drift.Status.OPEN

    until = today + dt.timedelta(days=3)
    client.post(url("mute", drift.pk), {"until": until.isoformat(), "reason": "known, fix in deploy 42"})
    drift.refresh_from_db()
    assert drift.status == Drift.Status.MUTED
    assert drift.muted_until == dt.datetime.combine(until, dt.time.min, tzinfo=dt.UTC)
    assert drift.note == "known, fix in deploy 42"
    assert RepairLog.objects.filter(drift=drift, action="mute", performed_by=reviewer).exists()


def test_repair__without_repair_drift__no_button_no_action_and_a_post_is_refused(
    users_drift: UsersDrift, no_repair: User
) -> None:
    client = login(no_repair)
    drift = users_drift.drift(users_drift.repaired_id)
    detail = client.get(url("change", drift.pk)).content.decode()
    assert 'id="acknowledge"' in detail  # may review...
    assert 'id="repair"' not in detail  # ...but not repair
    changelist = client.get(url("changelist")).content.decode()
    assert "acknowledge_selected" in changelist
    assert "repair_selected" not in changelist

    assert client.get(url("repair", drift.pk)).status_code == 403
    assert client.post(url("repair", drift.pk), {"confirm": "yes"}).status_code == 403
    client.post(
        url("changelist"), {"action": "repair_selected", "_selected_action": [drift.pk], "confirm": "yes"}
    )
    assert Drift.objects.get(pk=drift.pk).status == Drift.Status.OPEN
    assert BackendUser.objects.get(pk=users_drift.repaired_id).full_name == users_drift.target_name
    assert not RepairLog.objects.filter(action__in=["update", "repair"]).exists()


def test_repair__confirm_page_shows_the_plan__then_the_task_repairs_and_logs(
    users_drift: UsersDrift, reviewer: User, eager: None
) -> None:
    client = login(reviewer)
    drift = users_drift.drift(users_drift.repaired_id)
    confirm = client.get(url("repair", drift.pk)).content.decode()
    assert "update" in confirm
    assert "users" in confirm
    assert "default" in confirm
    assert f"full_name = {users_drift.source_name}" in confirm
    assert SOURCE_HASH not in confirm
    assert Drift.objects.get(pk=drift.pk).status == Drift.Status.OPEN  # the plan changes nothing

    client.post(url("repair", drift.pk), {"confirm": "yes"})
    assert Drift.objects.get(pk=drift.pk).status == Drift.Status.REPAIRED
    backend = BackendUser.objects.get(pk=users_drift.repaired_id)
    assert backend.full_name == users_drift.source_name
    assert backend.hashed_password == SOURCE_HASH  # copied on repair, never shown
    log = RepairLog.objects.get(drift=drift, action="update")
    assert (log.executed, log.verified, log.performed_by) == (True, True, reviewer)
    messages = set(LogEntry.objects.filter(object_id=str(drift.pk)).values_list("change_message", flat=True))
    assert "Repair requested" in messages
    assert any(m.startswith("Repaired (update") for m in messages)
    # the other drift was not touched
    assert Drift.objects.get(key=users_drift.acked_id).status == Drift.Status.OPEN


def test_repair_action_from_the_list__confirm_then_repair(
    users_drift: UsersDrift, reviewer: User, eager: None
) -> None:
    client = login(reviewer)
    ids = list(Drift.objects.values_list("pk", flat=True))
    data = {"action": "repair_selected", "_selected_action": ids}
    confirm = client.post(url("changelist"), data).content.decode()
    assert 'id="confirm-repair"' in confirm
    assert confirm.count("<td>update</td>") == 2
    assert set(Drift.objects.values_list("status", flat=True)) == {Drift.Status.OPEN}
    client.post(url("changelist"), {**data, "confirm": "yes"})
    assert set(Drift.objects.values_list("status", flat=True)) == {Drift.Status.REPAIRED}


def test_reverify__resolves_drift_fixed_in_the_store__keeps_drift_still_there(
    users_drift: UsersDrift, reviewer: User, eager: None
) -> None:
    client = login(reviewer)
    fixed, kept = users_drift.drift(users_drift.repaired_id), users_drift.drift(users_drift.acked_id)
    BackendUser.objects.filter(pk=users_drift.repaired_id).update(full_name=users_drift.source_name)
    client.post(url("reverify", fixed.pk))
    client.post(url("reverify", kept.pk))
    assert Drift.objects.get(pk=fixed.pk).status == Drift.Status.RESOLVED
    assert Drift.objects.get(pk=kept.pk).status == Drift.Status.OPEN
    assert RepairLog.objects.get(drift=fixed, action="reverify").verified is True
    assert RepairLog.objects.get(drift=kept, action="reverify").result == "still there"


def test_run_audit_now__needs_run_audit__and_records_an_admin_run(
    users_drift: UsersDrift, reviewer: User, no_repair: User, eager: None
) -> None:
    run_now = reverse("admin:consistency_run_now")
    assert login(no_repair).post(run_now, {"check": "users"}).status_code == 403
    client = login(reviewer)
    page = client.post(run_now, {"check": "nope"}, follow=True).content.decode()
    assert "unknown check(s) nope" in page
    assert not AuditRun.objects.filter(trigger=AuditRun.Trigger.ADMIN).exists()
    client.post(run_now, {"check": "users"})
    run = AuditRun.objects.get(trigger=AuditRun.Trigger.ADMIN)
    assert (run.checks, run.status) == (["users"], AuditRun.Status.DRIFT)
    # both runs saw both drifts: the history lists each run
    assert DriftSighting.objects.filter(run=run).count() == 2
    assert DriftSighting.objects.filter(drift__key=users_drift.acked_id).count() == 2


def test_dashboard__latest_run_per_check__open_drift__trend(users_drift: UsersDrift, reviewer: User) -> None:
    page = login(reviewer).get(reverse("admin:consistency_dashboard")).content.decode()
    latest = page.split('id="latest-runs"')[1].split("</table>")[0]
    users_row = latest.split(">users</a>")[1].split("</tr>")[0]
    assert f">{users_drift.run.pk}</a>" in users_row
    assert "Drift found" in users_row
    assert "never run" in latest  # the checks not audited here
    open_table = page.split('id="open-drift"')[1].split("</table>")[0]
    assert "<td>users</td><td>sql</td>" in open_table
    assert ">2</a>" in open_table
    today = users_drift.run.started_at.astimezone(dt.UTC).date().isoformat()
    assert f'data-day="{today}" data-seen="2" data-new="2" data-resolved="0"' in page
    assert 'id="run-audit-now"' in page
    assert "http://" not in page.split('id="trend"')[1].split("</svg>")[0].replace("http://www.w3.org", "")


def test_admin_index__links_the_dashboard__for_who_may_view_runs(reviewer: User) -> None:
    page = login(reviewer).get(reverse("admin:index")).content.decode()
    link = page.split('id="consistency-dashboard-link"')[1].split("</p>")[0]
    assert f'href="{reverse("admin:consistency_dashboard")}"' in link
    assert 'class="app-consistency module' in page  # still Django's index: the app list follows
    outsider = staff("outsider", ["view_drift"])
    index = login(outsider).get(reverse("admin:index")).content.decode()
    assert 'id="consistency-dashboard-link"' not in index
    assert "app-consistency" in index  # the index itself is shown, only without the link


def test_scheduled_runs_are_linked_from_the_periodic_task_admin(
    users_drift: UsersDrift, reviewer: User
) -> None:
    install_schedules()
    name = "consistency: full audit"
    result = tasks.scheduled_audit.apply(
        kwargs={"full": True, "checks": ["users"]}, headers={"periodic_task_name": name}
    ).get()
    run = AuditRun.objects.get(pk=result["run"])
    assert (run.trigger, run.schedule) == (AuditRun.Trigger.SCHEDULE, name)
    reviewer.is_superuser = True
    reviewer.save()
    client = login(reviewer)
    page = client.get(reverse("admin:django_celery_beat_periodictask_changelist")).content.decode()
    link = f"{reverse('admin:consistency_auditrun_changelist')}?schedule={name}"
    assert f'<a href="{link}">1 run(s)</a>' in page
    runs = client.get(link).content.decode()
    assert f">{run.pk}</a>" in runs
    assert f">{users_drift.run.pk}</a>" not in runs
    periodic = PeriodicTask.objects.get(name=name)
    detail = client.get(reverse("admin:django_celery_beat_periodictask_change", args=[periodic.pk]))
    assert "1 run(s)" in detail.content.decode()


def test_sightings__each_run_that_saw_the_drift(users_drift: UsersDrift, reviewer: User) -> None:
    second, _ = run_audit(registry.select(["users"]), AuditOptions(settle=0))
    drift = users_drift.drift(users_drift.repaired_id)
    assert sorted(DriftSighting.objects.filter(drift=drift).values_list("run_id", flat=True)) == sorted(
        [users_drift.run.pk, second.pk]
    )
    page = login(reviewer).get(url("change", drift.pk)).content.decode()
    assert "Runs that saw it (2)" in page
    assert f"run {second.pk}</a>" in page
    assert drift.times_seen == 2


def test_review_pages_need_staff_login(client: Client) -> None:
    response = client.get(reverse("admin:consistency_dashboard"))
    assert response.status_code == 302
    assert "/login/" in response["Location"]
