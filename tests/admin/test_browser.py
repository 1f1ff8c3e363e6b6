"""The review flow in real headless Chromium (Debian's ``chromium``, driven by Playwright)
against the live server, with a real Celery worker running the repair.

Screenshots go to ``artifacts/admin/`` (git-ignored); docs/img/drift-detail.png and
docs/img/dashboard.png are two of them.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from consistency.backend.models import User as BackendUser
from consistency.models import Drift, RepairLog
from tests.admin.conftest import PASSWORD, SOURCE_HASH, TARGET_HASH, UsersDrift, seed_trend

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "admin"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, databases=["default", "auth"]),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is missing (scripts/test installs it)"
    ),
]


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the ORM calls the test
    # makes between page actions are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def logged_in(browser: Any, base: str, username: str) -> Any:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")
    return page


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
    return value


def test_review_flow__dashboard_filter_detail_acknowledge_repair(
    browser: Any, live_server: Any, worker: object, users_drift: UsersDrift, reviewer: User
) -> None:
    other = Drift.objects.create(
        check_name="threads_user", kind="orphan", key="t-1", source={"user_id": "gone"}
    )
    base = live_server.url
    page = logged_in(browser, base, reviewer.username)

    page.click("#content-main a:text-is('Drifts')")
    page.click(".object-tools a:text-is('Dashboard')")
    page.wait_for_selector("#trend rect.new", state="attached")
    assert page.locator('#trend g.day[data-seen="2"][data-new="2"]').count() == 1  # today: both drifts
    assert page.locator("#open-drift tbody tr").count() == 2  # users/sql and threads_user/sql
    assert (
        page.locator("#latest-runs tr:has(a:text-is('users')) .consistency-status").inner_text()
        == "Drift found"
    )
    shot(page, "dashboard")

    page.goto(f"{base}/admin/consistency/drift/")
    assert page.locator("#result_list tbody tr").count() == 3
    page.click("#changelist-filter a[href*='check_name=users']")
    page.wait_for_url("**check_name=users**")
    page.click("#changelist-filter a[href*='kind=mismatch']")
    page.wait_for_url("**kind=mismatch**")
    assert page.locator("#result_list tbody tr").count() == 2
    assert other.key not in page.content()
    shot(page, "drift-list-filtered")

    page.click(f"#result_list a:text-is('{users_drift.repaired_id}')")
    page.wait_for_selector("#sides")
    differing = page.locator("#sides tr.consistency-differs")
    assert differing.count() == 1
    assert differing.get_attribute("data-field") == "full_name"
    assert page.locator("#sides tr[data-field=email]").get_attribute("class") == ""
    html = page.content()
    assert users_drift.source_name in html
    assert users_drift.target_name in html
    assert SOURCE_HASH not in html
    assert TARGET_HASH not in html
    shot(page, "drift-detail")

    page.goto(f"{base}/admin/consistency/drift/{users_drift.drift(users_drift.acked_id).pk}/change/")
    page.click("#acknowledge")
    page.wait_for_selector("#drift-status:text-is('Acknowledged')")
    assert page.locator("#drift-status").inner_text() == "Acknowledged"
    assert users_drift.drift(users_drift.acked_id).status == Drift.Status.ACKNOWLEDGED

    repaired = users_drift.drift(users_drift.repaired_id)
    page.goto(f"{base}/admin/consistency/drift/{repaired.pk}/change/")
    page.click("#repair")
    page.wait_for_selector("#plan")
    plan = page.locator("#plan tbody tr")
    assert plan.count() == 1
    assert plan.inner_text().split("\t")[:3] == ["update", "default", "users"]
    assert f"full_name = {users_drift.source_name}" in plan.inner_text()
    assert SOURCE_HASH not in page.content()
    shot(page, "repair-confirm")
    page.click("#confirm-repair")
    page.wait_for_url(f"**/drift/{repaired.pk}/change/")

    def repaired_status() -> bool:
        page.reload()
        return page.locator("#drift-status").inner_text() == "Repaired"

    wait_for(repaired_status, "the repair task to mark the drift repaired")
    assert BackendUser.objects.get(pk=users_drift.repaired_id).full_name == users_drift.source_name
    assert (
        page.locator("#repairs tr.consistency-repair-update td.consistency-result").inner_text()
        == "updated 1"
    )
    shot(page, "drift-repaired")


def test_staff_without_repair_drift__sees_no_repair__and_cannot_post_it(
    browser: Any, live_server: Any, users_drift: UsersDrift, no_repair: User
) -> None:
    base = live_server.url
    drift = users_drift.drift(users_drift.repaired_id)
    page = logged_in(browser, base, no_repair.username)

    page.goto(f"{base}/admin/consistency/drift/")
    options = page.locator("select[name=action] option").all_inner_texts()
    assert "Acknowledge selected drift" in options
    assert not [o for o in options if o.startswith("Repair")]
    page.goto(f"{base}/admin/consistency/drift/{drift.pk}/change/")
    assert page.locator("#acknowledge").count() == 1
    assert page.locator("#repair").count() == 0
    shot(page, "no-repair-permission")

    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    headers = {"X-CSRFToken": token, "Referer": f"{base}/admin/"}
    direct = page.request.post(
        f"{base}/admin/consistency/drift/{drift.pk}/repair/", form={"confirm": "yes"}, headers=headers
    )
    assert direct.status == 403
    listed = page.request.post(
        f"{base}/admin/consistency/drift/",
        form={"action": "repair_selected", "_selected_action": str(drift.pk), "confirm": "yes"},
        headers=headers,
    )
    assert listed.status in (200, 302)
    assert "Yes, repair" not in listed.text()
    assert Drift.objects.get(pk=drift.pk).status == Drift.Status.OPEN
    assert BackendUser.objects.get(pk=users_drift.repaired_id).full_name == users_drift.target_name
    assert not RepairLog.objects.exists()


def test_dashboard__from_the_admin_index__30_days_of_trend(
    browser: Any, live_server: Any, reviewer: User
) -> None:
    seeded = seed_trend(days=30, runs_a_day=2)
    page = logged_in(browser, live_server.url, reviewer.username)
    page.click("#consistency-dashboard-link a")  # the admin's own index links the dashboard
    page.wait_for_selector("#trend g.day")
    days = page.locator("#trend g.day")
    assert days.count() == 30
    shown = {
        days.nth(i).get_attribute("data-day"): (
            int(days.nth(i).get_attribute("data-seen") or -1),
            int(days.nth(i).get_attribute("data-new") or -1),
            int(days.nth(i).get_attribute("data-resolved") or -1),
        )
        for i in range(30)
    }
    assert shown == {
        (seeded.today - dt.timedelta(days=k)).isoformat(): (
            seeded.seen[seeded.today - dt.timedelta(days=k)],
            seeded.new[seeded.today - dt.timedelta(days=k)],
            seeded.resolved[seeded.today - dt.timedelta(days=k)],
        )
        for k in range(30)
    }
    labels = page.locator("#trend text.day-label").all_text_contents()
    assert labels[-1] == f"{seeded.today:%b} {seeded.today.day}"
    assert len(labels) == 5
    assert "resolved" in page.locator("#trend-legend").inner_text()
    page.set_viewport_size({"width": 1280, "height": 760})
    page.screenshot(path=str(ARTIFACTS / "dashboard-trend.png"))
