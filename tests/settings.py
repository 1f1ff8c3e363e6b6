"""Test settings: the real stores on this machine unless the environment says otherwise.

scripts/test starts what is missing (ClickHouse, the Milvus lite server); each
variable can be overridden to point the suite at other servers.
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/consistency")
os.environ.setdefault("AUTH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/consistency_auth")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("CLICKHOUSE_URL", "clickhouse://default@127.0.0.1:9000/consistency_test")
os.environ.setdefault("MILVUS_URI", "http://127.0.0.1:19530")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")

from project.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]  # noqa: F405
CONSISTENCY = {"SETTLE_SECONDS": 0.0}
