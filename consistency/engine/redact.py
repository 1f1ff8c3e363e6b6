"""Keep secrets out of reports, drift records and logs.

A value is hidden when its field name is a secret (``CONSISTENCY["SECRET_FIELDS"]``
plus each declaration's own ``secret`` fields); credentials inside URLs are
masked wherever they appear in a string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from consistency.conf import app_settings

REDACTED = "<redacted>"
MAX_SHOWN = 2000  # characters of one value kept in a finding
# The lookbehind starts a scheme only at the start of a run of scheme characters, so a
# long run without "://" is scanned once, not once per character (linear, not quadratic).
_URL_CREDENTIALS = re.compile(
    r"(?<![a-zA-Z0-9+.-])(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@"
)


def shorten(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: reports and drift
    records never carry a megabyte value whole."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def mask_urls(text: str) -> str:
    """``postgres://u:pw@h/db`` becomes ``postgres://u:***@h/db``."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def is_secret(name: str, extra: Iterable[str] = ()) -> bool:
    lowered = name.lower()
    return lowered in {s.lower() for s in app_settings.SECRET_FIELDS} or name in set(extra)


def redact(values: Mapping[str, Any] | None, extra: Iterable[str] = ()) -> dict[str, Any] | None:
    """A copy of ``values`` with secret fields hidden, URL credentials masked and long strings
    shortened, at any depth (a JSON column's nested keys are field names too)."""
    if values is None:
        return None
    secret = {s.lower() for s in app_settings.SECRET_FIELDS} | set(extra)
    return _redact_mapping(values, secret)


def _redact_mapping(values: Mapping[str, Any], secret: set[str]) -> dict[str, Any]:
    return {
        name: REDACTED if str(name).lower() in secret or name in secret else _redact_value(value, secret)
        for name, value in values.items()
    }


def _redact_value(value: Any, secret: set[str]) -> Any:
    if isinstance(value, str):
        return shorten(mask_urls(value))
    if isinstance(value, Mapping):
        return _redact_mapping(value, secret)
    if isinstance(value, list | tuple):
        return [_redact_value(v, secret) for v in value]
    return value
