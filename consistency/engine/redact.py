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
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")


def mask_urls(text: str) -> str:
    """``postgres://u:pw@h/db`` becomes ``postgres://u:***@h/db``."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def is_secret(name: str, extra: Iterable[str] = ()) -> bool:
    lowered = name.lower()
    return lowered in {s.lower() for s in app_settings.SECRET_FIELDS} or name in set(extra)


def redact(values: Mapping[str, Any] | None, extra: Iterable[str] = ()) -> dict[str, Any] | None:
    """A copy of ``values`` with secret fields hidden and URL credentials masked."""
    if values is None:
        return None
    extra = tuple(extra)
    out: dict[str, Any] = {}
    for name, value in values.items():
        if is_secret(name, extra):
            out[name] = REDACTED
        elif isinstance(value, str):
            out[name] = mask_urls(value)
        else:
            out[name] = value
    return out
