"""Read the deployment's configuration from the environment.

django-environ does the parsing; this module adds what it leaves out: a scheme
must be one we can serve, and every refusal names the variable that caused it,
so a typo in ``AUTH_DATABASE_URL`` stops start-up with that name on screen.
Unset variables fall back to the embedded default (files under ``VAR_DIR``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

env = environ.Env()

DATABASE_SCHEMES = {
    "postgres": "django.db.backends.postgresql",
    "postgresql": "django.db.backends.postgresql",
    "pgsql": "django.db.backends.postgresql",
    "sqlite": "django.db.backends.sqlite3",
}
REDIS_SCHEMES = ("redis", "rediss", "unix")
CLICKHOUSE_SCHEMES = ("clickhouse", "clickhouses", "chdb")
MILVUS_SCHEMES = ("http", "https", "tcp", "grpc")
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp")


def _refuse(name: str, value: str, why: str) -> ImproperlyConfigured:
    shown = redact_url(value)
    return ImproperlyConfigured(f"{name}={shown!r} is not usable: {why}")


def redact_url(value: str) -> str:
    """Return ``value`` with any password in its URL replaced by ``***``."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return "<unparsable>"
    if parts.password is None:
        return value
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _scheme(name: str, value: str, allowed: tuple[str, ...] | dict[str, str]) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a non-numeric port
    except ValueError as exc:
        raise _refuse(name, value, f"unparsable URL ({exc})") from exc
    if not parts.scheme:
        raise _refuse(name, value, "not a URL (no scheme://)")
    if parts.scheme not in allowed:
        expected = ", ".join(f"{s}://" for s in allowed)
        raise _refuse(name, value, f"unknown scheme {parts.scheme!r}; expected one of {expected}")
    return parts.scheme


def var_dir() -> Path:
    """Folder for the embedded default's files (SQLite, chDB, milvus-lite)."""
    base = Path(__file__).resolve().parent.parent
    path = Path(os.environ.get("VAR_DIR") or base / "var")
    path.mkdir(parents=True, exist_ok=True)
    return path


def database(name: str, default_file: str) -> dict[str, object]:
    """A DATABASES entry from ``name``, or an SQLite file under VAR_DIR when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return {"ENGINE": DATABASE_SCHEMES["sqlite"], "NAME": str(var_dir() / default_file)}
    scheme = _scheme(name, value, DATABASE_SCHEMES)
    try:
        config = env.db_url_config(value)
    except (ValueError, KeyError) as exc:
        raise _refuse(name, value, str(exc)) from exc
    config["ENGINE"] = DATABASE_SCHEMES[scheme]
    if not config.get("NAME"):
        raise _refuse(name, value, "no database name in the path")
    if scheme != "sqlite":
        options = dict(config.get("OPTIONS") or {})
        options.setdefault("connect_timeout", number("DATABASE_CONNECT_TIMEOUT", 5, minimum=1))
        options.update(statement_timeout_options(number("DATABASE_STATEMENT_TIMEOUT", 900)))
        options.update(keepalive_options())
        pool_size = number("DATABASE_POOL_MAX_SIZE", 0)
        pool_timeout = number("DATABASE_POOL_TIMEOUT", 10, minimum=0.1)
        if pool_size:
            # psycopg's pool through Django's `pool` option; a request that cannot get a
            # connection within DATABASE_POOL_TIMEOUT seconds fails instead of waiting forever.
            options["pool"] = {
                "min_size": 1,
                "max_size": int(pool_size),
                "timeout": pool_timeout,
            }
        config["OPTIONS"] = options
    return config


def statement_timeout_options(seconds: float) -> dict[str, str]:
    """libpq options that make the server cancel a statement after ``seconds`` (0: never)."""
    if not seconds:
        return {}
    return {"options": f"-c statement_timeout={round(seconds * 1000)}"}


def keepalive_options() -> dict[str, int]:
    """libpq options that end a connection whose network went silent (a partition mid-query).

    ``statement_timeout`` makes the server cancel a slow statement, but its error never
    reaches a client cut off from it: without these, that client waits for a reply forever.
    TCP keepalives probe an idle connection after DATABASE_KEEPALIVES_IDLE seconds, every
    DATABASE_KEEPALIVES_INTERVAL seconds, DATABASE_KEEPALIVES_COUNT times; a client whose
    request stays unacknowledged for DATABASE_TCP_USER_TIMEOUT seconds gives up (0: the OS
    default, many minutes).
    """
    options = {
        "keepalives": 1,
        "keepalives_idle": whole("DATABASE_KEEPALIVES_IDLE", 30, minimum=1),
        "keepalives_interval": whole("DATABASE_KEEPALIVES_INTERVAL", 10, minimum=1),
        "keepalives_count": whole("DATABASE_KEEPALIVES_COUNT", 3, minimum=1),
    }
    user_timeout = number("DATABASE_TCP_USER_TIMEOUT", 60)
    if user_timeout:
        options["tcp_user_timeout"] = round(user_timeout * 1000)  # libpq wants milliseconds
    return options


def client_timeout_grace() -> float:
    """Seconds a PostgreSQL call may wait past its statement timeout before the client gives up
    (consistency.stores.deadline); DATABASE_CLIENT_TIMEOUT_GRACE, 30 by default."""
    return float(number("DATABASE_CLIENT_TIMEOUT_GRACE", 30, minimum=0.1))


def whole(name: str, default: int, minimum: int = 0) -> int:
    """A whole number (of seconds, or a count) from ``name``, refusing anything else by name."""
    value = number(name, default, minimum)
    if not float(value).is_integer():
        raise ImproperlyConfigured(
            f"{name}={os.environ.get(name, '').strip()!r} is not usable: expected a whole number >= {minimum}"
        )
    return int(value)


def number(name: str, default: float, minimum: float = 0) -> float:
    """A non-negative number of seconds (or a count) from ``name``, refusing anything else by name."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        parsed = float(value)
    except ValueError:
        parsed = float("nan")
    if not parsed >= minimum or parsed == float("inf"):
        raise ImproperlyConfigured(f"{name}={value!r} is not usable: expected a number >= {minimum:g}")
    return int(parsed) if parsed.is_integer() else parsed


def cache(name: str) -> dict[str, object]:
    """The default cache: django-redis for ``name``, local memory when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "consistency"}
    _scheme(name, value, REDIS_SCHEMES)
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": value,
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SERIALIZER": "django_redis.serializers.json.JSONSerializer",
            "SOCKET_CONNECT_TIMEOUT": number("REDIS_CONNECT_TIMEOUT", 5, minimum=0.1),
            "SOCKET_TIMEOUT": number("REDIS_TIMEOUT", 5, minimum=0.1),
        },
    }


def clickhouse(name: str) -> str:
    """The analytics store URL; ``chdb://`` under VAR_DIR when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return f"chdb://{var_dir() / 'chdb'}"
    _scheme(name, value, CLICKHOUSE_SCHEMES)
    return value


def milvus(name: str) -> str:
    """The vector store URI: a server URL, or a milvus-lite ``.db`` path (the default)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return str(var_dir() / "milvus.db")
    if "://" not in value:
        if not value.endswith(".db"):
            raise _refuse(name, value, "a milvus-lite path must end in .db")
        return value
    _scheme(name, value, MILVUS_SCHEMES)
    return value


def broker(name: str) -> str | None:
    """The Celery broker URL, or None to run tasks in-process."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    _scheme(name, value, BROKER_SCHEMES)
    return value


def boolean(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not usable: expected true or false")


def hosts(name: str, default: list[str]) -> list[str]:
    if not os.environ.get(name, "").strip():
        return default
    return [host.strip() for host in env.list(name) if host.strip()]
