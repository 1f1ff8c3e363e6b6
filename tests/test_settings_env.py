"""Start-up reads the environment: a bad value stops it, naming the variable."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STORE_VARIABLES = (
    "DATABASE_URL",
    "AUTH_DATABASE_URL",
    "REDIS_URL",
    "CLICKHOUSE_URL",
    "MILVUS_URI",
    "CELERY_BROKER_URL",
    "DEBUG",
    "VAR_DIR",
)
GOOD = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/backend",
    "AUTH_DATABASE_URL": "postgres://postgres@127.0.0.1:5432/auth",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "CLICKHOUSE_URL": "clickhouse://default@127.0.0.1:9000/analytics",
    "MILVUS_URI": "http://127.0.0.1:19530",
    "CELERY_BROKER_URL": "amqp://guest@127.0.0.1:5672//",
    "DEBUG": "false",
}
SETTINGS_AS_JSON = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({
    "databases": {alias: [c["ENGINE"], str(c["NAME"])] for alias, c in s.DATABASES.items()},
    "cache": s.CACHES["default"]["BACKEND"],
    "clickhouse": s.CLICKHOUSE_URL,
    "milvus": s.MILVUS_URI,
    "eager": s.CELERY_TASK_ALWAYS_EAGER,
    "debug": s.DEBUG,
}))
"""


def start(
    tmp_path: Path, code: str = "import django; django.setup()", **variables: str
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` under project.settings with only ``variables`` set among the store variables."""
    env = {k: v for k, v in os.environ.items() if k not in STORE_VARIABLES}
    env.update({"DJANGO_SETTINGS_MODULE": "project.settings", "VAR_DIR": str(tmp_path)}, **variables)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("variable", "value", "pattern"),
    [
        ("DATABASE_URL", "mysql://x/y", r"(?<!AUTH_)DATABASE_URL='mysql://x/y'.*unknown scheme 'mysql'"),
        ("AUTH_DATABASE_URL", "postgres://u:secretpw@h:notaport/db", r"AUTH_DATABASE_URL="),
        ("REDIS_URL", "http://x", r"REDIS_URL='http://x'.*unknown scheme 'http'"),
        ("CLICKHOUSE_URL", "mysql://x", r"CLICKHOUSE_URL='mysql://x'.*unknown scheme 'mysql'"),
        ("MILVUS_URI", "/tmp/x.txt", r"MILVUS_URI='/tmp/x.txt'.*\.db"),  # noqa: S108 - never opened
        ("CELERY_BROKER_URL", "ftp://x", r"CELERY_BROKER_URL='ftp://x'.*unknown scheme 'ftp'"),
        ("DEBUG", "maybe", r"DEBUG='maybe'.*true or false"),
        ("DATABASE_CLIENT_TIMEOUT_GRACE", "soon", r"DATABASE_CLIENT_TIMEOUT_GRACE='soon'.*a number >= 0.1"),
        ("DATABASE_CLIENT_TIMEOUT_GRACE", "0", r"DATABASE_CLIENT_TIMEOUT_GRACE='0'.*a number >= 0.1"),
    ],
)
def test_bad_value__stops_startup_naming_the_variable(
    tmp_path: Path, variable: str, value: str, pattern: str
) -> None:
    result = start(tmp_path, **{**GOOD, variable: value})
    assert result.returncode != 0, result.stdout
    assert "ImproperlyConfigured" in result.stderr
    assert re.search(pattern, result.stderr), result.stderr
    assert "secretpw" not in result.stderr + result.stdout


def test_good_values__start_cleanly(tmp_path: Path) -> None:
    result = start(tmp_path, SETTINGS_AS_JSON, **GOOD)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["databases"]["default"] == ["django.db.backends.postgresql", "backend"]
    assert resolved["databases"]["auth"] == ["django.db.backends.postgresql", "auth"]
    assert resolved["cache"] == "django_redis.cache.RedisCache"
    assert resolved["clickhouse"] == GOOD["CLICKHOUSE_URL"]
    assert resolved["milvus"] == GOOD["MILVUS_URI"]
    assert resolved["eager"] is False
    assert resolved["debug"] is False


GRACE = "import django; django.setup(); from django.conf import settings; print(settings.DATABASE_CLIENT_TIMEOUT_GRACE)"


@pytest.mark.parametrize(("value", "expected"), [("", "30.0"), ("2.5", "2.5"), ("7", "7.0")])
def test_client_timeout_grace__from_the_environment(tmp_path: Path, value: str, expected: str) -> None:
    result = start(tmp_path, GRACE, **GOOD, DATABASE_CLIENT_TIMEOUT_GRACE=value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_everything_unset__embedded_default_under_var_dir(tmp_path: Path) -> None:
    result = start(tmp_path, SETTINGS_AS_JSON)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["databases"] == {
        "default": ["django.db.backends.sqlite3", str(tmp_path / "backend.sqlite3")],
        "auth": ["django.db.backends.sqlite3", str(tmp_path / "auth.sqlite3")],
    }
    assert resolved["cache"] == "django.core.cache.backends.locmem.LocMemCache"
    assert resolved["clickhouse"] == f"chdb://{tmp_path / 'chdb'}"
    assert resolved["milvus"] == str(tmp_path / "milvus.db")
    assert resolved["eager"] is True
