"""The review pages stay quick with 100,000 drift records: paginated, indexed, no per-row queries.

The rows are made once for the module, in PostgreSQL itself (``generate_series``),
and removed afterwards; each test counts the queries one page takes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.urls import reverse

from consistency.models import AuditRun, CheckRun, Drift, DriftSighting
from tests.admin.conftest import PASSWORD, REVIEWER, staff

DRIFTS = 100_000
RUNS = 200
CHECKS = ["users", "threads_user", "cache_backend_users", "analytics_message_events"]

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module", autouse=True)
def many_drifts(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    with django_db_blocker.unblock():
        if connection.vendor != "postgresql":
            pytest.skip("the 100k-row fixture is written in PostgreSQL's SQL")
        runs = AuditRun.objects.bulk_create(
            AuditRun(trigger="schedule", checks=CHECKS, status="drift") for _ in range(RUNS)
        )
        CheckRun.objects.bulk_create(
            CheckRun(run=r, check_name=c, kind="row", status="drift", drift_count=i % 7)
            for r in runs
            for i, c in enumerate(CHECKS)
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                INSERT INTO {Drift._meta.db_table} (check_name, kind, key, severity, store, fields, source,
                    target, detail, status, first_seen, last_seen, times_seen, note)
                SELECT (%(checks)s::text[])[1 + i %% 4],
                       (ARRAY['missing', 'mismatch', 'extra', 'orphan'])[1 + (i / 4) %% 4],
                       md5(i::text),
                       (ARRAY['info', 'warning', 'error', 'critical'])[1 + i %% 4],
                       (ARRAY['sql', 'sql', 'redis', 'clickhouse'])[1 + i %% 4],
                       '["full_name"]'::jsonb,
                       jsonb_build_object('full_name', 'source ' || i, 'email', i || '@x.test'),
                       jsonb_build_object('full_name', 'target ' || i, 'email', i || '@x.test'),
                       '',
                       (ARRAY['open', 'acknowledged', 'muted', 'resolved', 'repaired'])[1 + i %% 5],
                       now() - (i %% 90) * interval '1 day', now() - (i %% 3) * interval '1 hour',
                       1 + i %% 9, ''
                FROM generate_series(1, %(n)s) AS i
                """,
                {"checks": CHECKS, "n": DRIFTS},
            )
            cursor.execute(f"ANALYZE {Drift._meta.db_table}")
        assert Drift.objects.count() == DRIFTS
    yield
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        # TRUNCATE: a Django delete() would collect and null 100k references one batch at a time.
        tables = [m._meta.db_table for m in (DriftSighting, Drift, CheckRun, AuditRun)]
        cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")


@pytest.fixture
def client_in(db: None) -> Client:
    user: User = staff("counter", REVIEWER)
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    client.get(reverse("admin:index"))  # the session and content types are warm, as in use
    return client


CHANGELIST = reverse("admin:consistency_drift_changelist")

# Each page: session, user, permissions (user and group), then its own queries.
PAGES = [
    pytest.param(CHANGELIST, 100, 6, id="drift list"),
    pytest.param(f"{CHANGELIST}?check_name=users&kind=mismatch", 100, 6, id="by check and kind"),
    pytest.param(
        f"{CHANGELIST}?store=redis&status__exact=open&severity=error", 100, 6, id="store/status/sev"
    ),
    pytest.param(f"{CHANGELIST}?age=older&status__exact=muted", 100, 6, id="by age"),
    pytest.param(f"{CHANGELIST}?p=300", 100, 6, id="page 300"),
    pytest.param(f"{CHANGELIST}?q=c4ca4238a0b923820dcc509a6f75849b", 1, 6, id="search exact key"),
    pytest.param(f"{CHANGELIST}?q=c4ca42", None, 6, id="search key prefix"),
]


@pytest.mark.parametrize(("path", "rows", "most"), PAGES)
def test_drift_list_pages__bounded_queries_at_100k(
    client_in: Client, django_assert_max_num_queries: Any, path: str, rows: int | None, most: int
) -> None:
    with django_assert_max_num_queries(most):
        response = client_in.get(path)
    assert response.status_code == 200
    shown = response.content.decode().count('class="action-select"')
    if rows is None:
        assert shown >= 1
    else:
        assert shown == rows


def test_drift_detail__bounded_queries(client_in: Client, django_assert_max_num_queries: Any) -> None:
    drift = Drift.objects.filter(check_name="users").first()
    assert drift is not None
    runs = AuditRun.objects.order_by("-id").values_list("pk", flat=True)[:100]
    DriftSighting.objects.bulk_create(DriftSighting(drift=drift, run_id=r) for r in runs)
    with django_assert_max_num_queries(10):
        response = client_in.get(reverse("admin:consistency_drift_change", args=[drift.pk]))
    page = response.content.decode()
    assert "Runs that saw it (100)" in page
    assert page.count("consistency/auditrun/") >= 50


def test_dashboard_and_runs__bounded_queries(client_in: Client, django_assert_max_num_queries: Any) -> None:
    # The first load counts the trend's finished days (one query) and caches them; later
    # loads read them from the cache and count only today and the resolved drift.
    with django_assert_max_num_queries(10):
        client_in.get(reverse("admin:consistency_dashboard"))
    with django_assert_max_num_queries(9):
        response = client_in.get(reverse("admin:consistency_dashboard"))
    page = response.content.decode()
    assert page.count('<g class="day"') == 30
    open_table = page.split('id="open-drift"')[1].split("</table>")[0]
    assert open_table.count("<tr>") == 1 + len(CHECKS)  # header + one row per (check, store)
    with django_assert_max_num_queries(8):
        runs = client_in.get(reverse("admin:consistency_auditrun_changelist"))
    assert runs.content.decode().count('class="field-colored_status"') == 50
