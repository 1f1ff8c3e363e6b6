"""docker-compose.yml is valid and wires web, worker and beat to the same stores.

Validation uses Debian's docker-compose (1.29, no engine needed for ``config``),
which scripts/test installs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = {"postgres", "redis", "clickhouse", "milvus", "web", "worker", "beat"}
APP_SERVICES = ("web", "worker", "beat")
STORE_VARIABLES = (
    "DATABASE_URL",
    "AUTH_DATABASE_URL",
    "REDIS_URL",
    "CLICKHOUSE_URL",
    "MILVUS_URI",
    "CELERY_BROKER_URL",
)
# docker-compose is a Python program that ships with PyYAML; its interpreter
# turns the resolved config into JSON, so the suite needs no YAML parser.
TO_JSON = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"


def _docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail(
            "docker-compose is not installed: run scripts/test, which installs Debian's docker-compose"
        )
    return path


def _compose(compose_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_docker_compose(), "-f", str(compose_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=compose_file.parent,
        check=False,
    )


def _resolved_config() -> dict:
    result = _compose(COMPOSE_FILE, "config")
    assert result.returncode == 0, result.stderr
    interpreter = Path(_docker_compose()).read_text(errors="replace").splitlines()[0].removeprefix("#!")
    parsed = subprocess.run(
        [*interpreter.split(), "-c", TO_JSON],
        input=result.stdout,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(parsed.stdout)


def test_compose_file__validates() -> None:
    result = _compose(COMPOSE_FILE, "config", "-q")

    assert result.returncode == 0, result.stderr


def test_compose_file__broken_copy_fails_validation(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text()
    assert "\n  redis:\n" in text
    broken.write_text(text.replace("\n  redis:\n", "\n  redis:\n    not_a_compose_key: true\n", 1))
    (tmp_path / "docker").mkdir()
    shutil.copy(ROOT / "docker" / "postgres-init.sql", tmp_path / "docker")

    result = _compose(broken, "config", "-q")

    assert result.returncode != 0
    assert "not_a_compose_key" in result.stderr


def test_compose_file__has_every_service_the_design_needs() -> None:
    services = set(_resolved_config()["services"])

    assert services >= SERVICES, f"missing: {sorted(SERVICES - services)}"


def test_compose_file__app_services_share_the_store_variables() -> None:
    services = _resolved_config()["services"]
    seen = {
        name: {var: services[name].get("environment", {}).get(var) for var in STORE_VARIABLES}
        for name in APP_SERVICES
    }

    assert seen["web"] == seen["worker"] == seen["beat"]
    assert None not in seen["web"].values(), seen["web"]
    assert seen["web"]["CLICKHOUSE_URL"] == "clickhouse://default@clickhouse:9000/analytics"
    assert seen["web"]["MILVUS_URI"] == "http://milvus:19530"
    assert seen["web"]["CELERY_BROKER_URL"] == "redis://redis:6379/1"


def test_compose_file__stores_point_at_compose_services() -> None:
    services = _resolved_config()["services"]
    env = services["web"]["environment"]

    for var in STORE_VARIABLES:
        host = env[var].split("@")[-1].split("://")[-1].split(":")[0].split("/")[0]
        assert host in services, f"{var} points at {host!r}, not a compose service"


def test_compose_file__app_waits_for_healthy_stores() -> None:
    services = _resolved_config()["services"]
    depends = services["web"]["depends_on"]

    for store in ("postgres", "redis", "clickhouse", "milvus"):
        assert depends[store] == {"condition": "service_healthy"}, store
        assert "healthcheck" in services[store], store
    for name in ("worker", "beat"):
        assert services[name]["depends_on"] == {"web": {"condition": "service_healthy"}}


def test_compose_file__postgres_creates_both_databases() -> None:
    services = _resolved_config()["services"]
    env = services["web"]["environment"]
    init_sql = (ROOT / "docker" / "postgres-init.sql").read_text()

    assert services["postgres"]["environment"]["POSTGRES_DB"] == env["DATABASE_URL"].rsplit("/", 1)[1]
    auth_db = env["AUTH_DATABASE_URL"].rsplit("/", 1)[1]
    assert f"CREATE DATABASE {auth_db} " in init_sql
