"""The outbox: every change to an auth user writes its event in the same transaction."""

from __future__ import annotations

import pytest
from django.db import transaction

from consistency.auth_service.models import AuthUser, Outbox
from consistency.sync import auth_users
from tests.sync.conftest import sync_db

pytestmark = sync_db


def events(user_id: str) -> list[tuple[str, int]]:
    return list(Outbox.objects.filter(user_id=user_id).order_by("version").values_list("event", "version"))


def test_outbox__change_and_event_commit_or_roll_back_together() -> None:
    def create_then_fail() -> None:
        with transaction.atomic(using="auth"):
            auth_users.create_user(email="gone@corp.io", user_id="u-rollback")
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        create_then_fail()
    assert not AuthUser.objects.filter(pk="u-rollback").exists()
    assert events("u-rollback") == []

    # A bare ORM save in autocommit mode still commits row and event together.
    AuthUser(id="u-orm", email="orm@corp.io").save()
    assert events("u-orm") == [("created", 1)]


def test_outbox__versions_increase_per_user_across_every_path() -> None:
    auth_users.create_user(email="a@corp.io", user_id="u-a", full_name="A")
    auth_users.update_user("u-a", full_name="A2")
    auth_users.deactivate_user("u-a")
    auth_users.delete_user("u-a")
    assert events("u-a") == [("created", 1), ("updated", 2), ("deactivated", 3), ("deleted", 4)]
    # Re-created with the same id: versions keep growing, so old events stay older.
    auth_users.create_user(email="a@corp.io", user_id="u-a")
    assert events("u-a")[-1] == ("created", 5)
    last = Outbox.objects.get(user_id="u-a", version=2)
    assert last.payload["full_name"] == "A2"
    assert last.payload["hashed_password"] is None


def test_outbox__bulk_helpers_write_events_that_plain_update_misses() -> None:
    auth_users.bulk_create_users([AuthUser(id=f"u-b{i}", email=f"b{i}@corp.io") for i in range(3)])
    assert Outbox.objects.filter(user_id__startswith="u-b", event="created").count() == 3

    # Signals miss QuerySet.update(): no event (that is why the helper exists).
    AuthUser.objects.filter(pk="u-b0").update(full_name="silent")
    assert events("u-b0") == [("created", 1)]

    changed = auth_users.bulk_update_users(AuthUser.objects.filter(pk__in=["u-b1", "u-b2"]), is_active=False)
    assert changed == 2
    assert events("u-b1") == [("created", 1), ("deactivated", 2)]
    assert Outbox.objects.get(user_id="u-b2", version=2).payload["is_active"] is False

    assert auth_users.bulk_delete_users(AuthUser.objects.filter(pk__startswith="u-b")) == 3
    assert Outbox.objects.filter(user_id__startswith="u-b", event="deleted").count() == 3
