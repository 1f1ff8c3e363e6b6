"""PostgreSQL dropping in the middle of a repair: the repair's transaction rolls back whole
(no half-applied plan), the command exits 2 naming the store, and a rerun completes it."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connections

from consistency.backend.models import User
from consistency.engine.declarations import RowParity
from consistency.engine.findings import Action
from consistency.models import Drift, RepairLog
from tests.factories import AuthUserFactory
from tests.faultproxy import FaultProxy
from tests.reliability.conftest import command, finishes, reliability_db

pytestmark = reliability_db


def backend_users() -> dict[str, tuple[str, str, str | None]]:
    return {str(u.pk): (u.email, u.full_name, u.hashed_password) for u in User.objects.all()}


def test_postgres_drop_mid_repair__rolls_back_whole_and_rerun_completes(
    seeded: int, pg_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    drifted = [str(pk) for pk in User.objects.order_by("pk").values_list("pk", flat=True)[:5]]
    User.objects.filter(pk__in=drifted).update(full_name="Drifted Name")
    missing = str(AuthUserFactory.create().pk)  # an auth user the backend lacks
    code, _, _ = finishes(lambda: command("users"))
    assert code == 1
    assert Drift.objects.filter(check_name="users", status="open").count() == 6
    before = backend_users()

    # Cut every PostgreSQL connection right after the third action was applied, inside
    # the repair's transaction.
    applied: list[str] = []
    original = RowParity.apply_repair

    def apply_then_cut(self: RowParity, action: Action) -> Any:
        outcome = original(self, action)
        applied.append(action.key)
        if len(applied) == 3:
            pg_proxy.set("reset")
        return outcome

    monkeypatch.setattr(RowParity, "apply_repair", apply_then_cut)
    code, _, message = finishes(lambda: command("users", "--repair", "--execute"))
    assert code == 2, message
    assert "PostgreSQL" in message
    assert len(applied) == 3

    pg_proxy.heal()
    for alias in connections:
        connections[alias].close()
    assert backend_users() == before  # not one of the three applied actions survived
    assert RepairLog.objects.count() == 0
    assert Drift.objects.filter(check_name="users", status="open").count() == 6

    monkeypatch.setattr(RowParity, "apply_repair", original)
    code, out, message = finishes(lambda: command("users", "--repair", "--execute"))
    assert "repaired and re-verified 6 of 6" in out, message
    after = backend_users()
    assert missing in after
    assert all(after[pk][1] != "Drifted Name" for pk in drifted)
    assert finishes(lambda: command("users"))[0] == 0
    assert set(Drift.objects.filter(check_name="users").values_list("status", flat=True)) == {"repaired"}
