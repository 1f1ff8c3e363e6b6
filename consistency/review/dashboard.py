"""The figures of the admin dashboard, each in one query, and its trend chart as SVG data."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import reduce
from operator import or_
from typing import Any

from django.db.models import Count, Q, Subquery, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from consistency.engine.registry import registry
from consistency.models import AuditRun, CheckRun, Drift

TREND_DAYS = 30


def latest_check_runs() -> list[dict[str, Any]]:
    """Each registered check with its latest CheckRun (or None): one query, one index probe a check."""
    names = [d.name for d in registry]
    latest: dict[str, CheckRun] = {}
    if names:
        probes = [
            Q(pk=Subquery(CheckRun.objects.filter(check_name=n).order_by("-id").values("pk")[:1]))
            for n in names
        ]
        for cr in CheckRun.objects.filter(reduce(or_, probes)).select_related("run"):
            latest[cr.check_name] = cr
    return [{"decl": d, "check_run": latest.get(d.name)} for d in registry]


def open_drift() -> list[dict[str, Any]]:
    """Active drift counted per check and store (open, acknowledged, muted), in one GROUP BY."""
    S = Drift.Status
    rows = (
        Drift.objects.filter(status__in=[S.OPEN, S.ACKNOWLEDGED, S.MUTED])
        .values("check_name", "store")
        .annotate(
            open=Count("id", filter=Q(status=S.OPEN)),
            acknowledged=Count("id", filter=Q(status=S.ACKNOWLEDGED)),
            muted=Count("id", filter=Q(status=S.MUTED)),
        )
        .order_by("check_name", "store")
    )
    return [dict(row) for row in rows]


@dataclass(frozen=True)
class Bar:
    day: dt.date
    found: int
    new: int
    x: float
    found_y: float
    found_h: float
    new_y: float
    new_h: float


@dataclass(frozen=True)
class Trend:
    bars: list[Bar]
    width: int
    height: int
    bar_width: float
    top: int  # the value at the top of the chart
    total_found: int
    total_new: int


def trend(days: int = TREND_DAYS, today: dt.date | None = None) -> Trend:
    """Drift found per day by the audits (sum of each check run's drift) and, of it, new drift."""
    today = today or timezone.now().date()
    first = today - dt.timedelta(days=days - 1)
    start = dt.datetime.combine(first, dt.time.min, tzinfo=dt.UTC)
    found = dict(
        CheckRun.objects.filter(run__started_at__gte=start)
        .annotate(day=TruncDate("run__started_at", tzinfo=dt.UTC))
        .values("day")
        .annotate(n=Sum("drift_count"))
        .values_list("day", "n")
    )
    new = dict(
        Drift.objects.filter(first_seen__gte=start)
        .annotate(day=TruncDate("first_seen", tzinfo=dt.UTC))
        .values("day")
        .annotate(n=Count("id"))
        .values_list("day", "n")
    )
    width, height, pad = 600, 160, 2.0
    top = max([1, *(int(v or 0) for v in found.values()), *new.values()])
    slot = width / days
    bars = []
    for i in range(days):
        day = first + dt.timedelta(days=i)
        f, n = int(found.get(day) or 0), int(new.get(day) or 0)
        fh, nh = height * f / top, height * n / top
        bars.append(Bar(day, f, n, i * slot + pad / 2, height - fh, fh, height - nh, nh))
    return Trend(
        bars,
        width,
        height,
        slot - pad,
        top,
        sum(b.found for b in bars),
        sum(b.new for b in bars),
    )


def recent_runs(limit: int = 10) -> list[AuditRun]:
    return list(AuditRun.objects.order_by("-started_at")[:limit])
