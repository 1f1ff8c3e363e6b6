"""The app's settings namespace: one ``CONSISTENCY`` dict with defaults.

Read it as ``from consistency.conf import app_settings``; like DRF's
``api_settings`` it is lazy and reloads when a test overrides ``CONSISTENCY``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Dimension of the vectors in Milvus' `message_embeddings` collection.
    "EMBEDDING_DIM": 64,
    # Names of the analytics database's tables (ClickHouse or chDB).
    "CLICKHOUSE_DATABASE": None,  # None: the database named in CLICKHOUSE_URL, else "analytics"
    # Milvus collection that holds message embeddings.
    "MILVUS_COLLECTION": "message_embeddings",
    # Seconds the cached entities live in the cache.
    "CACHE_TTL": 3600,
    # Field names whose values never appear in reports, drift records, logs or the admin.
    "SECRET_FIELDS": (
        "hashed_password",
        "password",
        "refresh_token_hash",
        "token_hash",
        "encrypted_value",
        "provider_data",
        "secret",
        "api_key",
    ),
    # Smallest IBLT sub-table (cells); larger tables decode more drift in one scan.
    "IBLT_MIN_CELLS": 4096,
    # Seconds to wait before re-reading a candidate drift (settle and confirm).
    "SETTLE_SECONDS": 2.0,
    # An incremental audit starts this many seconds before the last watermark.
    "INCREMENTAL_MARGIN_SECONDS": 300,
    # --- System checks (issue 7) ---
    # Audits run on a Celery beat schedule; warns (consistency.W001) unless beat uses the database scheduler.
    "SCHEDULED_AUDITS": True,
    # --- Sync (consistency/sync) ---
    # What a relayed auth-user delete does to the backend user: "delete" or "deactivate".
    "SYNC_DELETE": "delete",
    # Outbox events claimed by one relay batch.
    "SYNC_BATCH_SIZE": 500,
    # Analytics changes exported to ClickHouse in one batch.
    "ANALYTICS_BATCH_SIZE": 5000,
    # Seconds a cache version counter lives (refreshed on every invalidation).
    "CACHE_VERSION_TTL": 7 * 24 * 3600,
    # Seconds an audit lock is held at most (a crashed audit frees it after this).
    "AUDIT_LOCK_SECONDS": 6 * 3600,
    # --- Fan-out of a full audit into segment tasks (consistency/engine/fanout.py) ---
    # A scheduled full audit fans a row parity check out when its larger side has at least this
    # many rows; None: never (fanout_audit can still be asked for explicitly).
    "FANOUT_ROWS": 2_000_000,
    # ... and only when at least this many workers answer a ping: one worker alone reads the
    # segments one after another, slower than the single-process audit's parallel scan.
    "FANOUT_MIN_WORKERS": 2,
    # TID-range segments per side (more segments than workers keeps them all busy to the end).
    "FANOUT_SEGMENTS": 16,
    # Seconds after which the coordinator takes over a segment whose claimer went silent.
    "FANOUT_LEASE_SECONDS": 900,
    # Addresses mailed when a scheduled audit finds new drift; empty: no mail.
    "ALERT_EMAILS": (),
    # URL that receives a JSON POST when a scheduled audit finds new drift; None: no webhook.
    "ALERT_WEBHOOK_URL": None,
    # Seconds the webhook request may take.
    "ALERT_WEBHOOK_TIMEOUT": 10.0,
    # Regular expressions (case-insensitive) for placeholder emails.
    "PLACEHOLDER_EMAIL_PATTERNS": (
        r"@example\.(com|org|net)$",
        r"@(test|invalid|localhost)(\.|$)",
        r"\.(invalid|test|example|local)$",
        r"^(placeholder|noreply|no-reply|changeme|unknown)[+._0-9-]*@",
        r"@placeholder\.",
    ),
}


def _whole(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _seconds(*, positive: bool) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        number = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        return number and (v > 0 if positive else v >= 0)

    return check


def _texts(v: Any) -> bool:
    return isinstance(v, list | tuple | set | frozenset) and all(isinstance(x, str) for x in v)


def _name(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _http_url(v: Any) -> bool:
    return isinstance(v, str) and urlsplit(v).scheme in ("http", "https") and bool(urlsplit(v).netloc)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _patterns(v: Any) -> bool:
    if not _texts(v):
        return False
    try:
        for pattern in v:
            re.compile(pattern)
    except re.error:
        return False
    return True


# What each setting must hold, and how to say so.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "EMBEDDING_DIM": (_whole(1), "a whole number >= 1"),
    "CLICKHOUSE_DATABASE": (_optional(_name), "None or a database name"),
    "MILVUS_COLLECTION": (_name, "a collection name"),
    "CACHE_TTL": (_whole(1), "a whole number of seconds >= 1"),
    "SECRET_FIELDS": (_texts, "a list of field names"),
    "IBLT_MIN_CELLS": (_whole(1), "a whole number >= 1"),
    "SETTLE_SECONDS": (_seconds(positive=False), "a finite number of seconds >= 0"),
    "INCREMENTAL_MARGIN_SECONDS": (_seconds(positive=False), "a finite number of seconds >= 0"),
    "SCHEDULED_AUDITS": (lambda v: isinstance(v, bool), "True or False"),
    "SYNC_DELETE": (lambda v: v in ("delete", "deactivate"), "one of 'delete', 'deactivate'"),
    "SYNC_BATCH_SIZE": (_whole(1), "a whole number >= 1"),
    "ANALYTICS_BATCH_SIZE": (_whole(1), "a whole number >= 1"),
    "CACHE_VERSION_TTL": (_whole(1), "a whole number of seconds >= 1"),
    "AUDIT_LOCK_SECONDS": (_whole(1), "a whole number of seconds >= 1"),
    "FANOUT_ROWS": (_optional(_whole(0)), "None or a whole number >= 0"),
    "FANOUT_MIN_WORKERS": (_whole(1), "a whole number >= 1"),
    "FANOUT_SEGMENTS": (_whole(1), "a whole number >= 1"),
    "FANOUT_LEASE_SECONDS": (_seconds(positive=True), "a finite number of seconds > 0"),
    "ALERT_EMAILS": (_texts, "a list of addresses"),
    "ALERT_WEBHOOK_URL": (_optional(_http_url), "None or an http(s) URL"),
    "ALERT_WEBHOOK_TIMEOUT": (_seconds(positive=True), "a finite number of seconds > 0"),
    "PLACEHOLDER_EMAIL_PATTERNS": (_patterns, "a list of regular expressions Python's re compiles"),
    # Not in DEFAULTS: engine/rangecache.cache_root reads it, its default under VAR_DIR.
    "RANGE_CACHE_DIR": (
        lambda v: v is None or v == "" or isinstance(v, str | os.PathLike),
        "None (off) or a directory",
    ),
}


def _invalid(key: str, value: Any) -> str | None:
    """Why ``CONSISTENCY[key]`` cannot be ``value``, or None when it can."""
    valid, expected = RULES[key]
    if valid(value):
        return None
    from consistency.engine.redact import mask_urls

    shown = mask_urls(repr(value))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return f"CONSISTENCY[{key!r}] is {shown}: expected {expected}"


def _configured() -> dict[str, Any]:
    config = getattr(settings, "CONSISTENCY", None)
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ImproperlyConfigured(
            f"settings.CONSISTENCY is a {type(config).__name__}: expected a dict of settings"
        )
    return config


def problems() -> list[str]:
    """What is wrong with ``settings.CONSISTENCY``, one message a key: a key this app does not
    read (a typo would otherwise be ignored), or a value it cannot use. URL credentials masked."""
    try:
        config = _configured()
    except ImproperlyConfigured as exc:
        return [str(exc)]
    found = []
    for key, value in config.items():
        if key not in RULES:
            near = difflib.get_close_matches(str(key), RULES, n=1)
            guess = f" (did you mean {near[0]!r}?)" if near else ""
            found.append(f"CONSISTENCY[{key!r}] is not a setting of this app{guess}")
        elif message := _invalid(key, value):
            found.append(message)
    return found


class AppSettings:
    """Attribute access to ``settings.CONSISTENCY`` with DEFAULTS behind it."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown CONSISTENCY setting: {name!r}")
        if name not in self._cache:
            value = _configured().get(name, DEFAULTS[name])
            if message := _invalid(name, value):
                raise ImproperlyConfigured(message)  # e.g. in a Celery task: the run fails naming it
            self._cache[name] = value
        return self._cache[name]

    def reload(self) -> None:
        self._cache.clear()


app_settings = AppSettings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "CONSISTENCY":
        app_settings.reload()


setting_changed.connect(_reload)
