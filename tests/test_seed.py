"""``manage.py seed`` fills every real store with one consistent data set."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from io import StringIO
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.test import override_settings

from consistency.auth_service.models import AuthSession, AuthUser
from consistency.backend.models import Message, Secret, Thread, ToolUsageLog, User
from consistency.cachekeys import CACHED_ENTITIES, SECRET_FIELDS
from consistency.seed import analytics as seed_analytics
from consistency.seed.runner import SeedError, SeedOptions
from consistency.stores.analytics import get_analytics
from consistency.stores.vectors import get_vectors

# transaction=True: --flush TRUNCATEs, which PostgreSQL refuses inside a transaction that
# still has deferred foreign key checks pending (analysis_results), as a test transaction does.
pytestmark = pytest.mark.django_db(databases=["default", "auth"], transaction=True)


@pytest.fixture
def stores() -> Iterator[SimpleNamespace]:
    """A fresh ClickHouse database and Milvus collection for this test, and an empty cache."""
    name = f"h3seed_{uuid.uuid4().hex[:10]}"
    with override_settings(CONSISTENCY={"CLICKHOUSE_DATABASE": name, "MILVUS_COLLECTION": name}):
        cache.clear()  # the test settings' own Redis database
        try:
            yield SimpleNamespace(analytics=get_analytics(), vectors=get_vectors())
        finally:
            get_analytics().execute(f"DROP DATABASE IF EXISTS `{name}`")
            get_vectors().drop()
            cache.clear()


def seed(**options: Any) -> str:
    out = StringIO()
    call_command("seed", stdout=out, **options)
    return out.getvalue()


def ids(model: type, field: str = "id") -> set[str]:
    return {str(v) for v in model._default_manager.values_list(field, flat=True)}  # type: ignore[attr-defined]


def vector_ids(store: Any) -> dict[str, str]:
    return {e: m for chunk in store.iter_ids(1000) for e, m in chunk}


def test_seed__every_store_agrees(stores: SimpleNamespace) -> None:
    out = seed(users=40, seed=7)
    assert "auth_users" in out
    assert "seeded" in out

    auth = set(AuthUser.objects.values_list("id", "email", "full_name", "is_active"))
    backend = set(User.objects.values_list("id", "email", "full_name", "is_active"))
    assert len(auth) == 40
    assert auth == backend

    threads = list(Thread.objects.all())
    assert threads
    assert all(t.metadata == {"user_id": t.user_id} for t in threads)

    owners = dict(Message.objects.values_list("id", "thread__user_id"))
    events = dict(seed_analytics.live_rows(stores.analytics, "message_events", ["id", "user_id"]))
    assert owners
    assert events == owners
    usage = {int(r[0]) for r in seed_analytics.live_rows(stores.analytics, "tool_usage_events", ["id"])}
    assert usage
    assert usage == set(ToolUsageLog.objects.values_list("id", flat=True))

    embeddings = dict(Message.objects.values_list("embedding_id", "id"))
    assert None not in embeddings
    assert vector_ids(stores.vectors) == embeddings

    secrets = {u.hashed_password for u in AuthUser.objects.all() if u.hashed_password}
    secrets |= set(AuthSession.objects.values_list("refresh_token_hash", flat=True))
    secrets |= set(Secret.objects.values_list("encrypted_value", flat=True))
    secrets |= {json.dumps(u.provider_data) for u in AuthUser.objects.all() if u.provider_data}
    assert secrets
    for entity in CACHED_ENTITIES:
        rows = list(entity.model._default_manager.all())
        assert rows, entity.name
        cached = cache.get_many([entity.key(row.pk) for row in rows])
        assert cached == {entity.key(row.pk): entity.payload(row) for row in rows}, entity.name
        text = json.dumps(list(cached.values()))
        assert not any(SECRET_FIELDS & payload.keys() for payload in cached.values())
        assert not any(secret in text for secret in secrets), entity.name

    summary = StringIO()
    call_command("storesummary", stdout=summary)
    assert summary.getvalue().count(": agree") == 4


def test_seed__same_seed_same_ids_other_seed_other_ids(stores: SimpleNamespace) -> None:
    seed(users=15, seed=7)
    first = (ids(User), ids(Thread), ids(Message), ids(Message, "embedding_id"))
    seed(users=15, seed=7, flush=True)
    again = (ids(User), ids(Thread), ids(Message), ids(Message, "embedding_id"))
    seed(users=15, seed=8, flush=True)
    other = (ids(User), ids(Thread), ids(Message), ids(Message, "embedding_id"))
    assert again == first
    for before, after in zip(first, other, strict=True):
        assert before
        assert after
        assert not before & after
    # After --flush, the other stores hold the new set only.
    assert set(vector_ids(stores.vectors)) == other[3]
    events = seed_analytics.live_rows(stores.analytics, "message_events", ["id"])
    assert {r[0] for r in events} == other[2]


def test_seed__twice_without_flush_refuses_and_keeps_data(stores: SimpleNamespace) -> None:
    seed(users=10, seed=1)
    before = (
        ids(AuthUser),
        ids(Message),
        stores.vectors.count(),
        seed_analytics.live_count(stores.analytics, "message_events"),
    )
    with pytest.raises(CommandError, match=r"already hold data.*auth_users.*--flush") as caught:
        seed(users=10, seed=2)
    assert caught.value.returncode == 2
    after = (
        ids(AuthUser),
        ids(Message),
        stores.vectors.count(),
        seed_analytics.live_count(stores.analytics, "message_events"),
    )
    assert after == before


def test_seed__flush_reseeds_with_the_new_count(stores: SimpleNamespace) -> None:
    seed(users=12, seed=3)
    seed(users=5, seed=4, flush=True)
    assert User.objects.count() == 5
    assert AuthUser.objects.count() == 5
    assert stores.vectors.count() == Message.objects.count()
    assert seed_analytics.live_count(stores.analytics, "tool_usage_events") == ToolUsageLog.objects.count()
    # Sequences moved past the seeded ids: a normal insert does not collide.
    assert ToolUsageLog.objects.create(user_id="x", tool_name="t", category="c").id > max(
        ToolUsageLog.objects.exclude(user_id="x").values_list("id", flat=True)
    )


def test_storesummary__names_what_disagrees(stores: SimpleNamespace) -> None:
    seed(users=8, seed=5)
    User.objects.filter(pk=User.objects.order_by("pk").values_list("pk", flat=True)[0]).delete()
    with pytest.raises(CommandError, match=r"auth_users vs users.*DISAGREE") as caught:
        call_command("storesummary", stdout=StringIO())
    assert caught.value.returncode == 1
    assert "messages vs message_events" not in str(caught.value)


def test_seed__unreachable_store_is_named(stores: SimpleNamespace) -> None:
    with (
        override_settings(CLICKHOUSE_URL="clickhouse://default@127.0.0.1:1/nowhere"),
        pytest.raises(CommandError, match=r"clickhouse") as caught,
    ):
        seed(users=3, seed=1, skip_vectors=True)
    assert caught.value.returncode == 2
    assert not AuthUser.objects.exists()


def test_seed_options__bad_values_are_named() -> None:
    with pytest.raises(SeedError, match="--users must be at least 1, got 0"):
        SeedOptions(users=0)
    with pytest.raises(SeedError, match="--batch-size must be at least 1, got -5"):
        SeedOptions(users=1, batch_size=-5)
