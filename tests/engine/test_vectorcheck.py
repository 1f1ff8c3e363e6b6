"""Vector reference parity against a real Milvus server (MILVUS_URI)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.test import override_settings

from consistency.backend.models import Message
from consistency.engine import repair
from consistency.engine.findings import AuditContext, Finding
from consistency.engine.vectorcheck import VectorParity
from consistency.stores.errors import StoreError
from consistency.stores.milvus import MAX_PAGE
from consistency.stores.vectors import VectorStore, close_vectors, get_vectors
from tests.commands import checkconsistency as run
from tests.factories import MessageFactory

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "auth"])

DIM = 8
CHECK = VectorParity(name="t_vectors", batch_size=2, range_rows=2)  # many ranges, some empty


@pytest.fixture
def vectors() -> Iterator[VectorStore]:
    """get_vectors() on a fresh collection of dimension 8 on the Milvus server."""
    if "://" not in settings.MILVUS_URI:
        pytest.fail(f"MILVUS_URI must name a Milvus server for these tests, got {settings.MILVUS_URI!r}")
    config = {**settings.CONSISTENCY, "MILVUS_COLLECTION": f"t_{uuid.uuid4().hex[:8]}", "EMBEDDING_DIM": DIM}
    with override_settings(CONSISTENCY=config):
        store = get_vectors()
        try:
            yield store
        finally:
            store.drop()
            close_vectors()


def vector(embedding_id: str | None, message_id: str) -> dict[str, object]:
    return {"embedding_id": embedding_id, "message_id": message_id, "vector": [0.5] * DIM}


def audit(decl: VectorParity = CHECK) -> dict[str, Finding]:
    findings, _ = decl.audit(AuditContext(started_at=None, settle=0))  # type: ignore[arg-type]
    return {f.key: f for f in findings}


def drift(store: VectorStore) -> dict[str, str]:
    """Five messages with vectors, one without, an orphan vector and a vector of another message."""
    store.ensure_collection()
    ok = MessageFactory.create_batch(5)
    lacking, crossed = MessageFactory.create_batch(2)
    MessageFactory.create(embedding_id=None)  # no embedding: nothing to compare
    store.upsert([vector(m.embedding_id, m.pk) for m in ok])
    store.upsert([vector("emb_orphan", "msg_gone"), vector(crossed.embedding_id, ok[0].pk)])
    return {
        "missing": str(lacking.embedding_id),
        "orphan": "emb_orphan",
        "mismatch": str(crossed.embedding_id),
    }


def test_audit__clean_when_every_message_has_its_vector(vectors: VectorStore) -> None:
    vectors.ensure_collection()
    messages = MessageFactory.create_batch(5)
    vectors.upsert([vector(m.embedding_id, m.pk) for m in messages])
    findings, figures = CHECK.audit(AuditContext(started_at=None, settle=0))  # type: ignore[arg-type]
    assert (findings, figures["compared"]) == ([], 5)


def test_audit__reports_orphans_both_ways_and_crossed_vectors(vectors: VectorStore) -> None:
    ids = drift(vectors)
    found = audit()
    assert {k: f.kind for k, f in found.items()} == {v: k for k, v in ids.items()}
    assert (
        found["emb_orphan"].detail
        == "vector emb_orphan names message msg_gone, which has no such embedding_id"
    )


def test_audit__wrong_dimension_is_a_finding(vectors: VectorStore) -> None:
    VectorStore(vectors.uri, vectors.collection, 4).ensure_collection()
    found = audit()
    assert list(found) == [vectors.collection]
    assert found[vectors.collection].kind == "invariant"
    assert found[vectors.collection].detail == (
        f"collection {vectors.collection} holds vectors of dimension 4, expected 8 (EMBEDDING_DIM)"
    )


def test_audit__missing_collection_is_a_finding(vectors: VectorStore) -> None:
    MessageFactory.create()
    found = audit()
    assert found[vectors.collection].detail == f"collection {vectors.collection} does not exist"


def test_repair__dry_run_execute_idempotent(vectors: VectorStore) -> None:
    ids = drift(vectors)
    actions = repair.plan(CHECK, list(audit().values()))
    assert {a.key: a.action for a in actions} == {ids["orphan"]: "delete", ids["missing"]: "detach"}
    assert len(audit()) == 3  # planning changed nothing
    logs = repair.execute(CHECK, actions)
    assert all(log.verified for log in logs)
    assert list(audit()) == [ids["mismatch"]]  # reported, not repaired automatically
    assert not Message.objects.filter(embedding_id=ids["missing"]).exists()
    assert vectors.get([ids["orphan"]]) == []
    again = repair.execute(CHECK, actions)
    assert sorted(log.result for log in again) == [
        "deleted 0 vector(s)",
        "marked 0 message(s) for re-embedding (embedding_id set to NULL)",
    ]


def test_command__lists_and_runs_the_vector_check(vectors: VectorStore) -> None:
    code, out = run("--list", "--tag", "vectors")
    assert code == 0
    assert [line.split()[:3] for line in out.splitlines()[1:]] == [
        ["vectors_message_embeddings", "vectors", "milvus"]
    ]
    drift(vectors)
    assert run("--tag", "vectors")[0] == 1


def test_command__unreachable_milvus_exits_2() -> None:
    with override_settings(MILVUS_URI="http://127.0.0.1:1"):
        code, out = run("--tag", "vectors")
    close_vectors()
    assert code == 2
    assert "vectors_message_embeddings" in out


def test_audit__pages_within_a_range_count_each_kind_exactly(vectors: VectorStore) -> None:
    """Ranges of three messages read from Milvus two ids a query: every kind, none lost or twice."""
    vectors.ensure_collection()
    messages = MessageFactory.create_batch(9)
    crossed, lacking = messages[2], messages[6]
    owners = {m.embedding_id: m.pk for m in messages if m is not lacking} | {
        crossed.embedding_id: "msg_other"
    }
    orphans = [f"{m.embedding_id}_{k}" for m in messages for k in range(3)]  # sort between messages
    vectors.upsert([vector(e, pk) for e, pk in owners.items()] + [vector(e, "msg_gone") for e in orphans])
    paged = VectorParity(name="t_vectors", batch_size=2, range_rows=3, page_rows=2)
    findings, figures = paged.audit(AuditContext(started_at=None, settle=0))  # type: ignore[arg-type]
    assert sorted((f.key, f.kind) for f in findings) == sorted(
        [(crossed.embedding_id, "mismatch"), (lacking.embedding_id, "missing")]
        + [(e, "orphan") for e in orphans]
    )
    assert figures["compared"] == 9 + len(orphans)


def test_audit__a_range_with_more_milvus_only_ids_than_a_query_cap_is_counted_exactly(
    vectors: VectorStore,
) -> None:
    """A database with two embeddings against 20,000 vectors more than Milvus' 16,384 a query."""
    vectors.ensure_collection()
    kept = MessageFactory.create_batch(2)
    extra = [f"emb_x{i:06d}" for i in range(MAX_PAGE + 3616)]
    vectors.upsert([vector(m.embedding_id, m.pk) for m in kept] + [vector(e, "msg_gone") for e in extra])
    for check in (VectorParity(name="t_vectors"), VectorParity(name="t_vectors", page_rows=4096)):
        findings, figures = check.audit(AuditContext(started_at=None, settle=0))  # type: ignore[arg-type]
        assert {f.kind for f in findings} == {"orphan"}
        assert sorted(f.key for f in findings) == extra
        assert (figures["compared"], figures["candidates"]) == (len(extra) + 2, len(extra))


def test_pages_between__bounded_pages_in_byte_order_and_a_failing_store_raises(vectors: VectorStore) -> None:
    vectors.ensure_collection()
    ids = [f"emb_{i:02d}" for i in range(7)]
    vectors.upsert([vector(e, "msg") for e in ids])
    pages = list(vectors.pages_between("emb_01", "emb_06", 2))
    assert [[e for e, _ in page] for page in pages] == [
        ["emb_01", "emb_02"],
        ["emb_03", "emb_04"],
        ["emb_05"],
    ]
    reading = vectors.pages_between(None, None, 3)
    assert [e for e, _ in next(reading)] == ids[:3]
    vectors.drop()  # the store fails between two pages of a range: an error, not an early end
    with pytest.raises(StoreError):
        next(reading)
