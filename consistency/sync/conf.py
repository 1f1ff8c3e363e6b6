"""Sync settings: keys of the one ``CONSISTENCY`` namespace (defaults in ``consistency.conf``)."""

from __future__ import annotations

from typing import Any

from consistency.conf import app_settings


def sync_setting(name: str) -> Any:
    """``settings.CONSISTENCY[name]``, else its default in ``consistency.conf.DEFAULTS``."""
    return getattr(app_settings, name)
