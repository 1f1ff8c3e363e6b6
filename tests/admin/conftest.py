"""Fixtures for the drift review admin: staff users with and without the review permissions,
real drift found by a real audit of the ``users`` check, and a Celery worker or eager tasks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

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
from consistency.models import AuditRun, Drift
from project.celery import app as celery_app
from tests.factories import AuthUserFactory, UserFactory

PASSWORD = "review-pass-123"
SOURCE_HASH = "$2b$12$SOURCEHASHmustNeverShowUpInTheAdmin0000000000000000000"
TARGET_HASH = "$2b$12$TARGETHASHmustNeverShowUpInTheAdmin0000000000000000000"

VIEW = ["view_drift", "view_auditrun", "view_repairlog"]
REVIEWER = [*VIEW, "review_drift", "repair_drift", "run_audit"]
NO_REPAIR = [*VIEW, "review_drift"]


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
    assert found == sorted(str(a.id) for a, _ in pairs), f"the audit should find both mismatches ({run.error})"
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
