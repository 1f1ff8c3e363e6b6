"""backend.0002 lower-cases users.email forwards and restores the originals backwards."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [
    pytest.mark.migration_test,
    pytest.mark.sqlite,
    pytest.mark.django_db(transaction=True, databases=["default", "auth"]),
]

BEFORE = ("backend", "0001_initial")
AFTER = ("backend", "0002_lowercase_user_emails")
EMAILS = {"u1": "Ada.Lovelace@Example.IO", "u2": "grace@navy.mil", "u3": "  Mixed@CASE.org"}


def _emails(state: Any, *fields: str) -> dict[str, tuple[Any, ...]]:
    User = state.apps.get_model("backend", "User")
    return {row[0]: row[1:] for row in User.objects.values_list("id", *fields)}


def test_0002__lowercases_forwards_and_restores_backwards(migrator: Any) -> None:
    old = migrator.apply_initial_migration(BEFORE)
    User = old.apps.get_model("backend", "User")
    User.objects.bulk_create([User(id=uid, email=email) for uid, email in EMAILS.items()])

    new = migrator.apply_tested_migration(AFTER)
    assert _emails(new, "email", "email_before_lowercase") == {
        "u1": ("ada.lovelace@example.io", "Ada.Lovelace@Example.IO"),
        "u2": ("grace@navy.mil", None),
        "u3": ("  mixed@case.org", "  Mixed@CASE.org"),
    }

    back = migrator.apply_tested_migration(BEFORE)
    assert _emails(back, "email") == {uid: (email,) for uid, email in EMAILS.items()}


def test_0002__refuses_addresses_that_differ_only_by_case(migrator: Any) -> None:
    old = migrator.apply_initial_migration(BEFORE)
    User = old.apps.get_model("backend", "User")
    User.objects.bulk_create([User(id="a", email="Same@X.io"), User(id="b", email="same@x.io")])
    try:
        with pytest.raises(RuntimeError, match=r"differ only by case: same@x\.io"):
            migrator.apply_tested_migration(AFTER)
        # The migration ran in one transaction: nothing changed.
        assert _emails(old, "email") == {"a": ("Same@X.io",), "b": ("same@x.io",)}
    finally:
        User.objects.all().delete()  # else the migrator's reset to latest would clash again
