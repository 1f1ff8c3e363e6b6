"""Fixtures for the drift review admin: staff users with and without the review permissions,
real drift found by a real audit of the ``users`` check, and a Celery worker or eager tasks.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from celery.contrib.testing.worker import start_worker
from django.contrib.auth.models import Permission, User
from django.core.cache import caches
from django.db import connections
from django.utils import timezone

from consistency.auth_service.models import AuthUser
from consistency.backend.models import User as BackendUser
from consistency.engine.registry import registry
from consistency.engine.runner import AuditOptions, run_audit
from consistency.models import AuditRun, CheckRun, Drift, DriftSighting
from project.celery import app as celery_app
from tests.factories import AuthUserFactory, UserFactory

PASSWORD = "review-pass-123"
SOURCE_HASH = "$2b$12$SOURCEHASHmustNeverShowUpInTheAdmin0000000000000000000"
TARGET_HASH = "$2b$12$TARGETHASHmustNeverShowUpInTheAdmin0000000000000000000"

VIEW = ["view_drift", "view_auditrun", "view_repairlog"]
REVIEWER = [*VIEW, "review_drift", "repair_drift", "run_audit"]
NO_REPAIR = [*VIEW, "review_drift"]


@pytest.fixture(autouse=True)
def no_cached_trend() -> Iterator[None]:
    """The dashboard keeps finished days' counts in the cache: each test starts without them."""
    caches["default"].clear()
    yield
    caches["default"].clear()


def staff(username: str, codenames: list[str]) -> User:
    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="consistency", codename__in=codenames)
    )
    return user


@pytest.fixture
def reviewer(db: None) -> User:
    """Staff with every review permission (acknowledge, mute, re-verify, repair, run audits)."""
    return staff("reviewer", REVIEWER)


@pytest.fixture
def no_repair(db: None) -> User:
    """Staff who may review drift but not repair it."""
    return staff("looker", NO_REPAIR)


@dataclass
class UsersDrift:
    """Two auth/backend user pairs whose names differ (so two ``users`` mismatches) and the run."""

    run: AuditRun
    repaired_id: str  # the pair the tests repair
    acked_id: str  # the pair the tests acknowledge
    source_name: str
    target_name: str

    def drift(self, user_id: str) -> Drift:
        return Drift.objects.get(check_name="users", key=user_id)


def make_users_drift() -> UsersDrift:
    """Committed rows on both PostgreSQL databases, then a real audit of ``users`` (no settle).

    ``bulk_create`` keeps the auth outbox out of it: no relay is triggered that could
    sync the pairs behind the test's back.
    """
    now = timezone.now() - dt.timedelta(minutes=5)  # before the audit starts: not "in flight"
    pairs = []
    for i, (source, target) in enumerate([("Ada Lovelace", "Ada L."), ("Grace Hopper", "G. Hopper")]):
        a = AuthUserFactory.build(
            full_name=source, hashed_password=SOURCE_HASH, email=f"review{i}@corp.test", updated_at=now
        )
        b = UserFactory.build(
            id=a.id,
            email=a.email,
            full_name=target,
            is_active=a.is_active,
            hashed_password=TARGET_HASH,
            updated_at=now,
        )
        pairs.append((a, b))
    AuthUser.objects.using("auth").bulk_create([a for a, _ in pairs])
    BackendUser.objects.using("default").bulk_create([b for _, b in pairs])
    run, _ = run_audit(registry.select(["users"]), AuditOptions(settle=0))
    found = sorted(Drift.objects.filter(check_name="users").values_list("key", flat=True))
    assert found == sorted(str(a.id) for a, _ in pairs), (
        f"the audit should find both mismatches ({run.error})"
    )
    return UsersDrift(run, str(pairs[0][0].id), str(pairs[1][0].id), "Ada Lovelace", "Ada L.")


@pytest.fixture
def users_drift(transactional_db: None) -> Iterator[UsersDrift]:
    caches["default"].clear()
    yield make_users_drift()
    caches["default"].clear()
    for alias in connections:
        connections[alias].close()


@pytest.fixture
def eager() -> Iterator[None]:
    """Run tasks in-process on ``.delay()`` (Celery's test mode) for client tests without a worker."""
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = before


@pytest.fixture
def worker(transactional_db: None) -> Iterator[object]:
    """A real Celery worker (solo pool, in a thread) on the configured broker."""
    assert not celery_app.conf.task_always_eager, "the browser tests need a broker (CELERY_BROKER_URL)"
    with celery_app.connection_for_write() as conn:
        celery_app.control.purge(connection=conn)
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=30) as w:
        yield w
    for alias in connections:
        connections[alias].close()


OPEN_STATUSES = [Drift.Status.OPEN] * 4 + [Drift.Status.ACKNOWLEDGED, Drift.Status.MUTED]


@dataclass
class SeededTrend:
    """Drift lives over ``days`` UTC days of audit runs, and what the trend must show per day."""

    today: dt.date
    seen: Counter[dt.date] = field(default_factory=Counter)  # distinct drifts alive that day
    new: Counter[dt.date] = field(default_factory=Counter)  # drifts that appeared that day
    resolved: Counter[dt.date] = field(default_factory=Counter)  # drifts resolved that day
    check_run_sum: Counter[dt.date] = field(default_factory=Counter)  # what summing check runs gives


def seed_trend(
    days: int = 30, runs_a_day: int = 2, seed: int = 6, today: dt.date | None = None
) -> SeededTrend:
    """Audit runs over ``days`` days (``runs_a_day`` each), drifts that appear, live a few days
    (every run of a day sees them) and get resolved, with their sightings and check runs.

    The expected figures are counted here from the lives, independently of the dashboard's SQL.
    """
    rng = random.Random(seed)
    today = today or timezone.now().astimezone(dt.UTC).date()
    first = today - dt.timedelta(days=days - 1)
    checks = [d for d in registry if d.kind in ("row", "reference", "cache", "analytics")][:6]
    # (check index, first day, last day seen or None while still there)
    lives: list[tuple[int, int, int | None]] = []
    for day in range(days):
        for _ in range(rng.choice([0, 1, 2, 3, 4, 6, 9]) + (4 if day % 7 in (1, 2) else 0)):
            length = rng.choice([1, 1, 2, 3, 5, 8, 13, 40])
            last_day = day + length - 1
            lives.append((rng.randrange(len(checks)), day, last_day if last_day < days - 1 else None))
    runs: dict[int, list[AuditRun]] = {}
    for day in range(days):
        midnight = dt.datetime.combine(first + dt.timedelta(days=day), dt.time.min, tzinfo=dt.UTC)
        runs[day] = AuditRun.objects.bulk_create(
            AuditRun(
                trigger=AuditRun.Trigger.SCHEDULE,
                schedule="consistency: full audit",
                checks=[c.name for c in checks],
                status=AuditRun.Status.DRIFT,
                started_at=midnight + dt.timedelta(minutes=10 + r),
                finished_at=midnight + dt.timedelta(minutes=10 + r, seconds=40),
            )
            for r in range(runs_a_day)
        )
    expected = SeededTrend(today)
    drifts = []
    for n, (c, start, end) in enumerate(lives):
        last = days - 1 if end is None else end
        day_of = first + dt.timedelta(days=start)
        drifts.append(
            Drift(
                check_name=checks[c].name,
                kind=rng.choice(["missing", "mismatch", "extra"]),
                key=f"seed-{n:05d}",
                store=checks[c].store,
                fields=["full_name"],
                source={"full_name": f"name {n}"},
                status=Drift.Status.RESOLVED if end is not None else rng.choice(OPEN_STATUSES),
                first_seen=runs[start][0].started_at,
                last_seen=runs[last][-1].started_at,
                first_run=runs[start][0],
                last_run=runs[last][-1],
                times_seen=(last - start + 1) * runs_a_day,
                resolved_at=None if end is None else runs[end + 1][0].finished_at,  # by the next day's run
            )
        )
        expected.new[day_of] += 1
        for day in range(start, last + 1):
            expected.seen[first + dt.timedelta(days=day)] += 1
        if end is not None:
            expected.resolved[first + dt.timedelta(days=end + 1)] += 1
    Drift.objects.bulk_create(drifts)
    DriftSighting.objects.bulk_create(
        DriftSighting(drift=d, run=run)
        for d, (_, start, end) in zip(drifts, lives, strict=True)
        for day in range(start, (days - 1 if end is None else end) + 1)
        for run in runs[day]
    )
    per_check: Counter[tuple[int, int]] = Counter()
    for c, start, end in lives:
        for day in range(start, (days - 1 if end is None else end) + 1):
            per_check[day, c] += 1
    CheckRun.objects.bulk_create(
        CheckRun(
            run=run,
            check_name=check.name,
            kind=check.kind,
            status=AuditRun.Status.DRIFT if per_check[day, c] else AuditRun.Status.OK,
            compared=1000,
            drift_count=per_check[day, c],
            duration=0.4 + 0.1 * c,
        )
        for day in range(days)
        for run in runs[day]
        for c, check in enumerate(checks)
    )
    for day in range(days):
        expected.check_run_sum[first + dt.timedelta(days=day)] = runs_a_day * sum(
            per_check[day, c] for c in range(len(checks))
        )
    return expected
