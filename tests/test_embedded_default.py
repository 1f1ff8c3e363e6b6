"""With no store variable set, the whole job runs on files under VAR_DIR."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_settings_env import ROOT, STORE_VARIABLES

pytestmark = pytest.mark.embedded

STEPS = (
    ["migrate", "--noinput"],
    ["migrate", "--database", "auth", "--noinput"],
    ["initstores"],
    ["seed", "--users", "30", "--seed", "11"],
    ["storesummary"],
    ["check"],
    # The demo's last step: every check, each in a fresh process against the files
    # (a milvus-lite collection starts 'released' in a new process).
    ["checkconsistency", "--settle", "0", "--format", "json"],
)


def manage(var_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in STORE_VARIABLES and not k.startswith("CONSISTENCY_")
    }
    env.update(DJANGO_SETTINGS_MODULE="project.settings", VAR_DIR=str(var_dir))
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_embedded_default__migrate_seed_and_summary_run_on_files(tmp_path: Path) -> None:
    outputs = {}
    for step in STEPS:
        result = manage(tmp_path, *step)
        assert result.returncode == 0, f"{' '.join(step)} failed:\n{result.stdout}\n{result.stderr}"
        outputs[step[0]] = result.stdout
    assert (tmp_path / "backend.sqlite3").is_file()
    assert (tmp_path / "auth.sqlite3").is_file()
    assert (tmp_path / "chdb").is_dir()
    assert (tmp_path / "milvus.db").exists()
    assert "chdb" in outputs["seed"]
    assert "milvus" in outputs["seed"]
    assert outputs["storesummary"].count(": agree") == 4
    assert "System check identified no issues" in outputs["check"]
    report = json.loads(outputs["checkconsistency"])
    assert report["run"]["status"] == "ok"
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert {"users", "cache_backend_users", "analytics_message_events", "vectors_message_embeddings"} <= set(
        statuses
    )
    assert set(statuses.values()) == {"ok"}
