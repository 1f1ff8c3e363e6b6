"""The Celery application, configured from Django settings (CELERY_ namespace)."""

import os

from celery import Celery
from celery.signals import beat_init, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("consistency")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The fanned-out audit's tasks (consistency/fanout_tasks.py): the segment tasks any worker takes.
app.autodiscover_tasks(related_name="fanout_tasks")


@worker_init.connect
@beat_init.connect
def refuse_unusable_settings(**kwargs: object) -> None:
    """Celery runs no Django system check: a worker or beat stops here on consistency.E004 (a
    misspelt CONSISTENCY key would otherwise run on its default), as runserver would."""
    from consistency.conf import problems

    if found := problems():
        raise SystemExit("invalid settings: " + "; ".join(found))
