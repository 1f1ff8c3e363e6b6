"""Shared fixtures: every test talks to the real stores named in tests/settings.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one chDB data folder of this test process (chDB opens one path per process)."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Lets a test register its own declarations and removes them afterwards."""
    from consistency.engine.registry import registry  # after Django is set up

    registry.autodiscover()
    before = dict(registry._checks)
    yield
    registry._checks.clear()
    registry._checks.update(before)
