"""The dashboard's trend: distinct drifts seen per day (new ones apart) and resolved per day."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.contrib.auth.models import User
from django.db.models import Sum
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from consistency.engine.registry import registry
from consistency.engine.runner import AuditOptions, run_audit
from consistency.models import AuditRun, CheckRun, Drift, DriftSighting
from consistency.review.dashboard import nice_top, trend
from tests.admin.conftest import PASSWORD, UsersDrift, seed_trend

DAY = re.compile(r'data-day="([\d-]+)" data-seen="(\d+)" data-new="(\d+)" data-resolved="(\d+)"')


def dashboard_days(user: User) -> dict[str, tuple[int, int, int]]:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    page = client.get(reverse("admin:consistency_dashboard")).content.decode()
    return {day: (int(s), int(n), int(r)) for day, s, n, r in DAY.findall(page)}


@pytest.mark.django_db(transaction=True, databases=["default", "auth"])
def test_two_runs_in_one_day_seeing_the_same_drift__count_it_once(
    users_drift: UsersDrift, reviewer: User
) -> None:
    first = users_drift.run
    second, _ = run_audit(registry.select(["users"]), AuditOptions(settle=0))
    AuditRun.objects.filter(pk=second.pk).update(started_at=first.started_at)  # the same day, always
    day = first.started_at.astimezone(dt.UTC).date()
    # Both runs saw both drifts: summing the check runs' drift would say 4.
    assert CheckRun.objects.filter(run__in=[first, second]).aggregate(n=Sum("drift_count"))["n"] == 4
    assert DriftSighting.objects.filter(run__in=[first, second]).count() == 4

    days = dashboard_days(reviewer)
    assert len(days) == 30
    assert days[day.isoformat()] == (2, 2, 0)  # 2 distinct drifts seen, both new, none resolved
    assert sum(seen for seen, _, _ in days.values()) == 2


@pytest.mark.django_db
def test_trend__every_day_seen_new_and_resolved__as_the_drifts_lived(reviewer: User) -> None:
    seeded = seed_trend(days=30, runs_a_day=2)
    shown = trend(today=seeded.today)
    assert [b.day for b in shown.bars] == [seeded.today - dt.timedelta(days=29 - i) for i in range(30)]
    for bar in shown.bars:
        assert (bar.seen, bar.new, bar.resolved) == (
            seeded.seen[bar.day],
            seeded.new[bar.day],
            seeded.resolved[bar.day],
        ), bar.day
    # The seed is not trivial: drift carries over days, gets resolved, and two runs a day
    # see it (so a sum of the check runs' drift would be twice the distinct count).
    assert sum(b.seen for b in shown.bars) > sum(b.new for b in shown.bars) > 30
    assert sum(b.resolved for b in shown.bars) > 10
    assert all(seeded.check_run_sum[b.day] == 2 * b.seen for b in shown.bars)
    # The page draws the same figures.
    on_page = dashboard_days(reviewer)
    assert on_page == {b.day.isoformat(): (b.seen, b.new, b.resolved) for b in shown.bars}


@pytest.mark.django_db
def test_trend__drawing__bars_to_scale__axis_ticks__weekly_day_labels(reviewer: User) -> None:
    seeded = seed_trend(days=30, runs_a_day=1, seed=2)
    shown = trend(today=seeded.today)
    peak = max(max(b.seen, b.resolved) for b in shown.bars)
    assert shown.top >= peak
    assert shown.ticks[0].value == 0
    assert shown.ticks[-1].value == shown.top
    tallest = max(shown.bars, key=lambda b: b.seen)
    plot = shown.bottom - shown.ticks[-1].y
    assert tallest.new_h + tallest.again_h == pytest.approx(plot * tallest.seen / shown.top)
    assert [b.label for b in shown.bars if b.label] == [
        f"{d:%b} {d.day}" for d in (seeded.today - dt.timedelta(days=k) for k in (28, 21, 14, 7, 0))
    ]
    client = Client()
    assert client.login(username=reviewer.username, password=PASSWORD)
    page = client.get(reverse("admin:consistency_dashboard")).content.decode()
    svg = page.split('id="trend"')[1].split("</svg>")[0]
    assert svg.count('class="tick"') == len(shown.ticks)
    assert f">{shown.top}</text>" in svg
    assert f">{seeded.today:%b} {seeded.today.day}</text>" in svg
    assert svg.count('<rect class="resolved"') == sum(1 for b in shown.bars if b.resolved)


@pytest.mark.parametrize(
    ("peak", "top", "step"),
    [(0, 1, 1), (3, 3, 1), (5, 6, 2), (9, 10, 5), (37, 40, 10), (101, 150, 50), (1234, 1500, 500)],
)
def test_nice_top__one_two_or_five_times_a_power_of_ten(peak: int, top: int, step: int) -> None:
    assert nice_top(peak) == (top, step)


@pytest.mark.django_db
def test_finished_days_come_from_the_cache__a_run_finishing_late_recounts_its_day(reviewer: User) -> None:
    seeded = seed_trend(days=30, runs_a_day=1, seed=3)
    yesterday = seeded.today - dt.timedelta(days=1)
    before = {b.day: b.seen for b in trend(today=seeded.today).bars}
    assert before[yesterday] == seeded.seen[yesterday]
    # A sighting written behind the dashboard's back: the cached finished day does not move...
    unseen = Drift.objects.exclude(sightings__run__started_at__date=yesterday).first()
    assert unseen is not None
    yesterdays_run = AuditRun.objects.get(started_at__date=yesterday)
    DriftSighting.objects.create(drift=unseen, run=yesterdays_run)
    assert {b.day: b.seen for b in trend(today=seeded.today).bars} == before
    # ...but a run that began yesterday and finishes now recounts yesterday: +1 above, +1 new drift.
    late = AuditRun.objects.create(
        started_at=dt.datetime.combine(yesterday, dt.time(23, 50), tzinfo=dt.UTC),
        status=AuditRun.Status.RUNNING,
    )
    Drift.objects.create(check_name="users", kind="missing", key="late-1", first_run=late, last_run=late)
    late.status, late.finished_at = AuditRun.Status.DRIFT, timezone.now()
    late.save()
    after = {b.day: (b.seen, b.new) for b in trend(today=seeded.today).bars}
    assert after[yesterday] == (seeded.seen[yesterday] + 2, seeded.new[yesterday] + 1)
    assert {d: s for d, (s, _) in after.items() if d != yesterday} == {
        d: s for d, s in before.items() if d != yesterday
    }
