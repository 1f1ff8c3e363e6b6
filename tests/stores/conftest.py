"""Fixtures for the store adapters: every back end is real, named per run so runs don't collide.

Analytics fixtures yield a store on a fresh database (dropped afterwards) on the
ClickHouse server named by CLICKHOUSE_URL and on chDB. chDB opens one path per
process, so ``chdb_path`` is session-scoped and lives in tests/conftest.py. Vector fixtures yield a VectorStore on a
fresh collection (dropped afterwards) on the Milvus server (MILVUS_URI) and on
a milvus-lite file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from consistency.stores.analytics import AnalyticsStore, ChdbStore, ClickHouseServerStore
from consistency.stores.vectors import VectorStore

ANALYTICS_KINDS = ("clickhouse", "chdb")
VECTOR_KINDS = ("milvus-server", "milvus-lite")


def unique_suffix() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def clickhouse_url() -> str:
    """The ClickHouse server URL from the settings (CLICKHOUSE_URL)."""
    url = settings.CLICKHOUSE_URL
    if urlsplit(url).scheme not in ("clickhouse", "clickhouses"):
        pytest.fail(f"CLICKHOUSE_URL must name a ClickHouse server for these tests, got {url!r}")
    return url


@pytest.fixture
def analytics_database(clickhouse_url: str) -> str:
    """A database name unique to this test, based on the one in CLICKHOUSE_URL."""
    base = urlsplit(clickhouse_url).path.strip("/") or "analytics"
    return f"{base}_{unique_suffix()}"


def _drop_database(store: AnalyticsStore) -> None:
    store.execute(f"DROP DATABASE IF EXISTS `{store.database}`")


@pytest.fixture(params=ANALYTICS_KINDS)
def analytics_store(
    request: pytest.FixtureRequest, clickhouse_url: str, chdb_path: Path, analytics_database: str
) -> Iterator[AnalyticsStore]:
    """A store on a fresh database, on the ClickHouse server and on chDB."""
    store: AnalyticsStore
    if request.param == "clickhouse":
        store = ClickHouseServerStore(clickhouse_url, analytics_database)
    else:
        store = ChdbStore(chdb_path, analytics_database)
    try:
        yield store
    finally:
        _drop_database(store)
        store.close()


@pytest.fixture(scope="session")
def milvus_lite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One milvus-lite file per test process (each file starts a local server)."""
    return str(tmp_path_factory.mktemp("milvus") / "vectors.db")


@pytest.fixture
def collection_name() -> str:
    return f"{os.environ.get('H_MILVUS_PREFIX', '')}test_{unique_suffix()}"


@pytest.fixture(params=VECTOR_KINDS)
def vector_uri(request: pytest.FixtureRequest, milvus_lite_uri: str) -> str:
    """The Milvus server (MILVUS_URI) or the milvus-lite file."""
    if request.param == "milvus-server":
        uri = settings.MILVUS_URI
        if "://" not in uri:
            pytest.fail(f"MILVUS_URI must name a Milvus server for these tests, got {uri!r}")
        return uri
    return milvus_lite_uri


@pytest.fixture
def vector_store(vector_uri: str, collection_name: str) -> Iterator[VectorStore]:
    """A VectorStore (dimension 8) on a collection that is dropped afterwards."""
    store = VectorStore(vector_uri, collection_name, 8)
    try:
        yield store
    finally:
        store.drop()
        store.close()
