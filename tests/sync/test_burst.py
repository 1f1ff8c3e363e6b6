"""After a burst of random writes through every path, the users check finds no drift."""

from __future__ import annotations

import random
from io import StringIO

from django.core.management import call_command

from consistency.auth_service.models import AuthUser
from consistency.backend.models import User
from consistency.sync import auth_users, relay
from tests.sync.conftest import sync_db, wait_until

pytestmark = sync_db


def test_burst__random_writes_through_every_path_leave_no_drift(worker: object) -> None:
    rng = random.Random(5)
    ids: list[str] = []
    for serial in range(1, 301):
        action = rng.choice(["create", "create", "orm", "update", "deactivate", "delete", "bulk", "bulkdel"])
        live = sorted(AuthUser.objects.filter(pk__in=ids).values_list("pk", flat=True))
        if action == "create" or not live:
            ids.append(auth_users.create_user(email=f"B{serial}@corp.io", user_id=f"u-burst{serial}").pk)
        elif action == "orm":
            user = AuthUser.objects.get(pk=rng.choice(live))
            user.full_name = f"orm {serial}"
            user.save()
        elif action == "update":
            auth_users.update_user(rng.choice(live), full_name=f"svc {serial}", email=f"b{serial}@corp.io")
        elif action == "deactivate":
            auth_users.deactivate_user(rng.choice(live))
        elif action == "delete":
            auth_users.delete_user(rng.choice(live))
        elif action == "bulk":
            chosen = rng.sample(live, min(5, len(live)))
            auth_users.bulk_update_users(AuthUser.objects.filter(pk__in=chosen), full_name=f"bulk {serial}")
        else:
            auth_users.bulk_delete_users(AuthUser.objects.filter(pk__in=rng.sample(live, min(2, len(live)))))
    new = [AuthUser(id=f"u-bc{i}", email=f"bc{i}@corp.io") for i in range(20)]
    auth_users.bulk_create_users(new)

    wait_until(lambda: relay.pending_count() == 0, timeout=60, what="outbox drained")
    assert User.objects.count() == AuthUser.objects.count() > 0
    out = StringIO()
    call_command("checkconsistency", "users", "--settle", "0", "--no-progress", stdout=out)  # raises on drift
    assert "users" in out.getvalue()
