"""Settings, read from the environment (see README, "Configuration").

Every store falls back to an embedded default when its variable is unset, so a
newcomer runs the whole job with no server; setting the variables points the
app at the real deployment.
"""

from __future__ import annotations

from pathlib import Path

from project import env

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = env.var_dir()

DEBUG = env.boolean("DEBUG", default=False)
_DEV_SECRET = "dev-only-insecure-key-set-SECRET_KEY-in-production"  # noqa: S105 - refused by check --deploy
SECRET_KEY = env.env.str("SECRET_KEY", default="") or _DEV_SECRET
ALLOWED_HOSTS = env.hosts("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "project.apps.ProjectAdminConfig",  # django.contrib.admin with the index linking the dashboard
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "consistency",
    "consistency.auth_service",
    "consistency.backend",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# `default` holds the backend schema and this app's own tables; `auth` holds the
# mirrored auth service schema and its outbox. The router keeps them apart.
DATABASES = {
    "default": env.database("DATABASE_URL", "backend.sqlite3"),
    "auth": env.database("AUTH_DATABASE_URL", "auth.sqlite3"),
}
DATABASE_ROUTERS = ["project.routers.ServiceRouter"]
# A PostgreSQL call still waiting for the server this many seconds past the statement timeout
# has its connection closed by consistency.stores.deadline (a stalled proxy or frozen backend).
DATABASE_CLIENT_TIMEOUT_GRACE = env.client_timeout_grace()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {"default": env.cache("REDIS_URL")}

CLICKHOUSE_URL = env.clickhouse("CLICKHOUSE_URL")
MILVUS_URI = env.milvus("MILVUS_URI")

# Celery: no broker means tasks run in-process (eager), so the embedded default
# needs no server.
CELERY_BROKER_URL = env.broker("CELERY_BROKER_URL") or "memory://"
CELERY_TASK_ALWAYS_EAGER = env.broker("CELERY_BROKER_URL") is None
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TIME_LIMIT = 30 * 60
CELERY_TASK_SOFT_TIME_LIMIT = 25 * 60
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"

# Sync (consistency.sync, consistency.tasks). A worker takes one task at a time, so a long
# audit does not hold back relays prefetched behind it. Publishing gives up fast when the
# broker is down: the outbox and analytics sweeps deliver what a lost trigger missed.
# acks_late is set per task, only on the idempotent ones; the Redis visibility timeout
# (redelivery of a lost worker's unacked task) exceeds their time limits.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# max_retries/interval_*: a publish to a broker that is down fails in well under a second (kombu's
# default retries for seconds, inside the on_commit hook of the write that triggered it).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 900,
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 1,
}
CELERY_TASK_IGNORE_RESULT = True

# The app's own settings namespace, read through consistency.conf.settings.
CONSISTENCY: dict[str, object] = {}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"consistency": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
