"""Shared fixtures: every test talks to the real stores named in tests/settings.py."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one chDB data folder of this test process (chDB opens one path per process)."""
    return tmp_path_factory.mktemp("chdb")
