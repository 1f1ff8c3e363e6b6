"""The figures of the admin dashboard, each in a query or two, and its trend chart as SVG data."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from functools import reduce
from operator import or_
from typing import Any

from django.core.cache import BaseCache, caches
from django.db.models import Count, F, Q, Subquery
from django.db.models.functions import TruncDate
from django.utils import timezone

from consistency.engine.redact import mask_urls
from consistency.engine.registry import registry
from consistency.models import AuditRun, CheckRun, Drift, DriftSighting

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
    """One day of the trend, with its bars' geometry in the chart's coordinates."""

    day: dt.date
    seen: int  # distinct drifts the day's runs saw
    new: int  # of them, found for the first time (by that day's run that first found them)
    resolved: int  # drifts resolved or repaired that day
    x: float  # left of the seen bar
    count_x: float  # middle of the seen bar (its count above it)
    center: float  # middle of the day's slot (the day label)
    seen_y: float
    new_y: float
    new_h: float
    again_h: float  # seen, not new: on top of the new bar
    resolved_x: float
    resolved_y: float
    resolved_h: float
    label: str  # the day label, on every 7th day counting back from today

    @property
    def again(self) -> int:
        return self.seen - self.new


@dataclass(frozen=True)
class Tick:
    value: int
    y: float


@dataclass(frozen=True)
class Trend:
    bars: list[Bar]
    ticks: list[Tick]
    width: int
    height: int  # the whole SVG
    left: int  # the plot's left edge (the y axis)
    bottom: int  # the plot's baseline
    bar_width: float
    resolved_width: float
    top: int  # the value at the top of the y axis
    peak_seen: int
    total_new: int
    total_resolved: int


def nice_top(peak: int, steps: int = 4) -> tuple[int, int]:
    """The y axis' top and step: a step of 1, 2 or 5 times a power of ten, ``steps`` or fewer to the top."""
    peak = max(peak, 1)
    step = 1
    while step * steps < peak:
        for factor in (2, 2.5, 2):  # 1 -> 2 -> 5 -> 10 -> 20 ...
            step = int(step * factor)
            if step * steps >= peak:
                break
    return step * -(-peak // step), step


#: Finished days' (seen, new) figures are kept in the cache: a day's sightings only change
#: when a run that started that day finishes later (``refresh_day`` then rewrites it).
CACHE_SECONDS = 6 * 3600
log = logging.getLogger(__name__)


def _cache_key(day: dt.date) -> str:
    return f"consistency:trend:{day.isoformat()}"


def _utc(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


def seen_between(first: dt.date, end: dt.date) -> dict[dt.date, tuple[int, int]]:
    """Per UTC day in [first, end): distinct drifts the day's runs saw, and of them new ones.

    One query over the sightings. A drift seen by several runs in a day counts once that
    day; it is new on the day of the run that first found it (``Drift.first_run``), so new
    never exceeds seen.
    """
    rows = (
        DriftSighting.objects.filter(run__started_at__gte=_utc(first), run__started_at__lt=_utc(end))
        .annotate(day=TruncDate("run__started_at", tzinfo=dt.UTC))
        .values("day")
        .annotate(
            n=Count("drift", distinct=True),
            new=Count("drift", distinct=True, filter=Q(drift__first_run=F("run"))),
        )
        .values_list("day", "n", "new")
    )
    return {day: (n, new) for day, n, new in rows}


def refresh_day(day: dt.date) -> None:
    """Recount a finished day and keep it (called when a run that started that day finishes)."""
    value = seen_between(day, day + dt.timedelta(days=1)).get(day, (0, 0))
    try:
        caches["default"].set(_cache_key(day), list(value), CACHE_SECONDS)
    except Exception as exc:  # the cache is an optimisation: without it the days are counted again
        log.warning("trend cache not written: %s", mask_urls(str(exc)))


def seen_per_day(first: dt.date, today: dt.date) -> dict[dt.date, tuple[int, int]]:
    """``seen_between`` for [first, today]: finished days from the cache when there, the days
    missing from it in one query, today always from the database. One or two queries."""
    past = [first + dt.timedelta(days=i) for i in range((today - first).days)]
    cache: BaseCache | None = caches["default"]
    hits: dict[str, Any] = {}
    try:
        hits = caches["default"].get_many([_cache_key(d) for d in past])
    except Exception as exc:  # the cache is an optimisation: without it the days are counted again
        log.warning("trend cache not read: %s", mask_urls(str(exc)))
        cache = None
    figures = {
        d: (int(hits[_cache_key(d)][0]), int(hits[_cache_key(d)][1])) for d in past if _cache_key(d) in hits
    }
    missing = [d for d in past if d not in figures]
    if missing:
        counted = seen_between(missing[0], missing[-1] + dt.timedelta(days=1))
        for day in missing:
            figures[day] = counted.get(day, (0, 0))
            if cache is not None:
                try:  # add: a refresh_day written meanwhile is newer than this count
                    cache.add(_cache_key(day), list(figures[day]), CACHE_SECONDS)
                except Exception as exc:
                    log.warning("trend cache not written: %s", mask_urls(str(exc)))
                    cache = None
    figures.update(seen_between(today, today + dt.timedelta(days=1)))
    return figures


def resolved_per_day(first: dt.date, end: dt.date) -> dict[dt.date, int]:
    """Per UTC day in [first, end): drifts resolved or repaired that day (their latest resolution)."""
    return dict(
        Drift.objects.filter(
            status__in=[Drift.Status.RESOLVED, Drift.Status.REPAIRED],
            resolved_at__gte=_utc(first),
            resolved_at__lt=_utc(end),
        )
        .annotate(day=TruncDate("resolved_at", tzinfo=dt.UTC))
        .values("day")
        .annotate(n=Count("id"))
        .values_list("day", "n")
    )


def trend(days: int = TREND_DAYS, today: dt.date | None = None) -> Trend:
    """Drift per day over the last ``days`` UTC days: distinct drifts seen (new ones at the
    bottom of the bar) and, beside it, drifts resolved that day. Two queries."""
    today = today or timezone.now().astimezone(dt.UTC).date()
    first = today - dt.timedelta(days=days - 1)
    seen = seen_per_day(first, today)
    resolved = resolved_per_day(first, today + dt.timedelta(days=1))
    width, height, left, right, top_pad, bottom_pad = 900, 230, 40, 8, 18, 32
    plot_h = height - top_pad - bottom_pad
    baseline = top_pad + plot_h
    peak = max([0, *(n for n, _ in seen.values()), *resolved.values()])
    top, step = nice_top(peak)
    slot = (width - left - right) / days
    bar_w, res_w = slot * 0.5, slot * 0.25

    def h(value: int) -> float:
        return plot_h * value / top

    bars = []
    for i in range(days):
        day = first + dt.timedelta(days=i)
        n, new = seen.get(day, (0, 0))
        r = resolved.get(day, 0)
        x = left + i * slot + slot * 0.1
        bars.append(
            Bar(
                day=day,
                seen=n,
                new=new,
                resolved=r,
                x=x,
                count_x=x + bar_w / 2,
                center=left + (i + 0.5) * slot,
                seen_y=baseline - h(n),
                new_y=baseline - h(new),
                new_h=h(new),
                again_h=h(n - new),
                resolved_x=x + bar_w + slot * 0.05,
                resolved_y=baseline - h(r),
                resolved_h=h(r),
                label=f"{day:%b} {day.day}" if (days - 1 - i) % 7 == 0 else "",
            )
        )
    ticks = [Tick(v, baseline - h(v)) for v in range(0, top + 1, step)]
    return Trend(
        bars=bars,
        ticks=ticks,
        width=width,
        height=height,
        left=left,
        bottom=baseline,
        bar_width=bar_w,
        resolved_width=res_w,
        top=top,
        peak_seen=max([0, *(b.seen for b in bars)]),
        total_new=sum(b.new for b in bars),
        total_resolved=sum(b.resolved for b in bars),
    )


def recent_runs(limit: int = 10) -> list[AuditRun]:
    return list(AuditRun.objects.order_by("-started_at")[:limit])
