"""`manage.py initstores` against both analytics and both vector back ends."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from pytest_django.fixtures import Settings as SettingsWrapper

from consistency.stores.analytics import close_analytics, connect
from consistency.stores.vectors import VectorStore


def _run(*args: str) -> str:
    out = StringIO()
    call_command("initstores", *args, stdout=out)
    return out.getvalue()


@pytest.fixture(
    params=[("clickhouse", "milvus-server"), ("chdb", "milvus-lite")], ids=["servers", "embedded"]
)
def configured(
    request: pytest.FixtureRequest,
    settings: SettingsWrapper,
    clickhouse_url: str,
    chdb_path: Path,
    analytics_database: str,
    milvus_lite_uri: str,
    collection_name: str,
) -> Iterator[tuple[str, str]]:
    """Point the settings at fresh stores; drop them afterwards."""
    analytics, vectors = request.param
    if analytics == "clickhouse":
        settings.CLICKHOUSE_URL = clickhouse_url.rsplit("/", 1)[0] + f"/{analytics_database}"
    else:
        settings.CLICKHOUSE_URL = f"chdb://{chdb_path}?database={analytics_database}"
    if vectors == "milvus-lite":
        settings.MILVUS_URI = milvus_lite_uri
    settings.CONSISTENCY = {"MILVUS_COLLECTION": collection_name, "EMBEDDING_DIM": 8}
    yield analytics_database, collection_name
    close_analytics()
    store = connect(settings.CLICKHOUSE_URL)
    store.execute(f"DROP DATABASE IF EXISTS {analytics_database}")
    store.close()
    VectorStore(settings.MILVUS_URI, collection_name, 8).drop()


def test_initstores__creates_then_reports_everything_present(configured: tuple[str, str]) -> None:
    database, collection = configured
    first = _run()
    assert (
        f"created database {database}, table {database}.message_events, table {database}.tool_usage_events"
        in first
    )
    assert f"created collection {collection}" in first
    second = _run()
    assert second.count("already present") == 2
    assert "created" not in second


def test_initstores__skips_what_it_is_told_to(configured: tuple[str, str]) -> None:
    database, collection = configured
    only_vectors = _run("--skip-analytics")
    assert "analytics" not in only_vectors
    assert f"created collection {collection}" in only_vectors
    only_analytics = _run("--skip-vectors")
    assert "vectors" not in only_analytics
    assert f"table {database}.message_events" in only_analytics


def test_initstores__unreachable_clickhouse_exits_2_naming_it(settings: SettingsWrapper) -> None:
    settings.CLICKHOUSE_URL = "clickhouse://default:s3cret-pw@127.0.0.1:1/h1_nowhere"
    with pytest.raises(CommandError) as caught:
        _run("--skip-vectors")
    assert caught.value.returncode == 2
    assert "store clickhouse is unavailable" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


def test_initstores__unreachable_milvus_exits_2_naming_it(settings: SettingsWrapper) -> None:
    settings.MILVUS_URI = "http://127.0.0.1:1"
    with pytest.raises(CommandError) as caught:
        _run("--skip-analytics")
    assert caught.value.returncode == 2
    assert "store milvus is unavailable" in str(caught.value)


def test_initstores__bad_url_exits_2_naming_the_problem(settings: SettingsWrapper) -> None:
    settings.CLICKHOUSE_URL = "chdb://relative/path"
    with pytest.raises(CommandError, match="chdb:///abs/path") as caught:
        _run("--skip-vectors")
    assert caught.value.returncode == 2


@pytest.mark.embedded
def test_manage_py_initstores__embedded_stores_in_a_subprocess(tmp_path: Path) -> None:
    """The real command line, with MILVUS_URI a milvus-lite path (pymilvus parses it on import)."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "CLICKHOUSE_URL": f"chdb://{tmp_path}/chdb?database=h1_embedded",
        "MILVUS_URI": str(tmp_path / "milvus.db"),
    }
    manage = [sys.executable, str(Path(django_settings.BASE_DIR) / "manage.py"), "initstores"]
    first = subprocess.run(manage, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert (first.returncode, first.stderr) == (0, "")
    assert "created database h1_embedded" in first.stdout
    assert "created collection message_embeddings" in first.stdout
    second = subprocess.run(manage, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 0
    assert second.stdout.count("already present") == 2
