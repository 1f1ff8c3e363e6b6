"""``manage.py check --deploy`` is clean with the production settings, and catches what it must."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def deploy_check(**env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS")},
        "DJANGO_SETTINGS_MODULE": "project.settings_production",
        **env,
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy__clean_with_production_settings() -> None:
    result = deploy_check(SECRET_KEY=secrets.token_urlsafe(50), DEBUG="false", ALLOWED_HOSTS="example.org")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_check_deploy__refuses_debug_and_the_development_key() -> None:
    result = deploy_check(DEBUG="true", ALLOWED_HOSTS="example.org")
    assert result.returncode != 0
    for check_id in ("security.W018", "consistency.W002", "consistency.W003"):
        assert check_id in result.stderr, result.stderr
