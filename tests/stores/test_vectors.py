"""The vector store on the Milvus server and on milvus-lite."""

from __future__ import annotations

import os
import random

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from consistency.stores.errors import StoreError
from consistency.stores.vectors import VectorStore, get_vectors

HOSTILE_IDS = ['quote"d', "back\\slash", "it's", "semi;colon", "é-∑-🙂", "new\nline", "x" * 64]
# message_id is VARCHAR(64) too; keep the test ids short enough for the prefix.


def _rows(ids: list[str], dim: int = 8) -> list[dict[str, object]]:
    return [
        {"embedding_id": i, "message_id": f"m{i}"[:64], "vector": [float(n) for n in range(dim)]} for i in ids
    ]


def test_ensure_collection__creates_once_then_reports_it_exists(vector_store: VectorStore) -> None:
    assert vector_store.ensure_collection() is True
    assert vector_store.ensure_collection() is False
    assert vector_store.dimension() == 8
    assert vector_store.count() == 0


def test_ensure_collection__wrong_dimension_is_a_store_error(vector_store: VectorStore) -> None:
    vector_store.ensure_collection()
    other = VectorStore(vector_store.uri, vector_store.collection, 16)
    with pytest.raises(StoreError, match="dimension 8, expected 16") as caught:
        other.ensure_collection()
    assert caught.value.store == "milvus"


def test_upsert_get_delete_count__round_trip(vector_store: VectorStore) -> None:
    vector_store.ensure_collection()
    ids = [f"emb_{i:03d}" for i in range(10)]
    assert vector_store.upsert(_rows(ids), batch_size=3) == 10
    assert vector_store.count() == 10
    # Upserting an existing id replaces it: the count stays.
    assert vector_store.upsert([{"embedding_id": "emb_000", "message_id": "moved", "vector": [1.0] * 8}]) == 1
    assert vector_store.count() == 10
    got = {row["embedding_id"]: row for row in vector_store.get(["emb_000", "emb_001", "absent"])}
    assert set(got) == {"emb_000", "emb_001"}
    assert got["emb_000"]["message_id"] == "moved"
    assert got["emb_001"]["vector"] == [float(n) for n in range(8)]
    assert vector_store.delete(["emb_000", "emb_001", "absent"]) == 2
    assert vector_store.count() == 8
    assert vector_store.get(["emb_000"]) == []


def test_hostile_ids__are_quoted_in_filters(vector_store: VectorStore) -> None:
    vector_store.ensure_collection()
    vector_store.upsert(_rows([*HOSTILE_IDS, "plain"]))
    assert sorted(row["embedding_id"] for row in vector_store.get(HOSTILE_IDS)) == sorted(HOSTILE_IDS)
    assert vector_store.delete(HOSTILE_IDS[:3]) == 3
    remaining = [key for batch in vector_store.iter_ids(batch_size=2) for key, _ in batch]
    assert sorted(remaining) == sorted([*HOSTILE_IDS[3:], "plain"])


def test_iter_ids__yields_every_id_exactly_once_across_batches(vector_store: VectorStore) -> None:
    vector_store.ensure_collection()
    rng = random.Random(7)
    alphabet = "abcXYZ019_-\"\\'é"
    ids = sorted({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20))) for _ in range(1500)})
    vector_store.upsert(
        ({"embedding_id": i, "message_id": f"m{n}", "vector": [0.5] * 8} for n, i in enumerate(ids))
    )
    batches = list(vector_store.iter_ids(batch_size=128))
    seen = [pair for batch in batches for pair in batch]
    assert len(seen) == len(ids)
    assert sorted(key for key, _ in seen) == ids
    assert max(len(batch) for batch in batches) == 128
    assert len(batches) == -(-len(ids) // 128)
    assert dict(seen)[ids[0]] == f"m{0}"


def test_ids_between__a_key_range_in_byte_order(vector_store: VectorStore) -> None:
    vector_store.ensure_collection()
    ids = [*HOSTILE_IDS, "a", "ab", "b", "ba", "é", "z"]
    vector_store.upsert(_rows(ids))
    in_bytes = sorted(ids, key=str.encode)
    assert [k for k, _ in vector_store.ids_between(None, None)] == in_bytes
    assert [k for k, _ in vector_store.ids_between("ab", "ba")] == [i for i in in_bytes if "ab" <= i < "ba"]
    assert [k for k, _ in vector_store.ids_between("b", None)] == [i for i in in_bytes if i >= "b"]
    assert [k for k, _ in vector_store.ids_between(None, "a")] == [i for i in in_bytes if i < "a"]
    assert dict(vector_store.ids_between("é", "é-")) == {"é": "mé"}  # "é" sorts after "z"


def test_upsert__refuses_rows_of_the_wrong_shape(vector_store: VectorStore) -> None:
    vector_store.ensure_collection()
    with pytest.raises(ValueError, match="'e1' has dimension 3, expected 8"):
        vector_store.upsert([{"embedding_id": "e1", "message_id": "m1", "vector": [0.0] * 3}])
    with pytest.raises(ValueError, match=r"embedding_id 'x+' is longer than 64 bytes"):
        vector_store.upsert([{"embedding_id": "x" * 65, "message_id": "m1", "vector": [0.0] * 8}])
    with pytest.raises(ValueError, match="'e2' lacks message_id"):
        vector_store.upsert([{"embedding_id": "e2", "vector": [0.0] * 8}])
    assert vector_store.count() == 0


def test_missing_collection__is_a_store_error(vector_store: VectorStore) -> None:
    with pytest.raises(StoreError) as caught:
        vector_store.count()
    assert caught.value.store == "milvus"
    assert vector_store.collection in str(caught.value)


def test_unreachable_server__is_a_store_error_without_the_password() -> None:
    store = VectorStore("http://root:s3cret-pw@127.0.0.1:1", "h1_nowhere", 8, timeout=2)
    with pytest.raises(StoreError) as caught:
        store.ensure_collection()
    assert caught.value.store == "milvus"
    assert "127.0.0.1:1" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("http://127.0.0.1:19530", "bad-name", 8), "collection name 'bad-name'"),
        (("http://127.0.0.1:19530", "ok", 0), "dimension must be a positive int"),
        (("var/vectors.sqlite", "ok", 8), "ending in .db"),
    ],
)
def test_vector_store__refuses_bad_configuration(args: tuple[str, str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VectorStore(*args)


def test_get_vectors__follows_settings(settings: SettingsWrapper, milvus_lite_uri: str) -> None:
    prefix = os.environ.get("H_MILVUS_PREFIX", "")
    settings.MILVUS_URI = milvus_lite_uri
    settings.CONSISTENCY = {"MILVUS_COLLECTION": f"{prefix}test_cached", "EMBEDDING_DIM": 4}
    store = get_vectors()
    assert get_vectors() is store
    assert (store.uri, store.collection, store.dim) == (milvus_lite_uri, f"{prefix}test_cached", 4)
    settings.CONSISTENCY = {"MILVUS_COLLECTION": f"{prefix}test_other", "EMBEDDING_DIM": 4}
    assert get_vectors().collection == f"{prefix}test_other"
