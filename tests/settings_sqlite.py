"""The engine suite again with both aliases on SQLite (the embedded default's engine)."""

import os

for name in ("DATABASE_URL", "AUTH_DATABASE_URL"):
    os.environ[name] = ""

from tests.settings import *  # noqa: E402, F403

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(VAR_DIR / "test-backend.sqlite3")},  # noqa: F405
    "auth": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(VAR_DIR / "test-auth.sqlite3")},  # noqa: F405
}
