"""Settings for a worker process started by the sync tests: the test settings, and a visibility
timeout the test chooses, checked every second (so a message a killed worker held comes back fast)."""

import os

from tests.settings import *  # noqa: F403

CELERY_BROKER_TRANSPORT_OPTIONS = {
    **CELERY_BROKER_TRANSPORT_OPTIONS,  # noqa: F405
    "visibility_timeout": int(os.environ.get("TEST_VISIBILITY_TIMEOUT", "900")),
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
