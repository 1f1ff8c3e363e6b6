"""The Celery application, configured from Django settings (CELERY_ namespace)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("consistency")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The fanned-out audit's tasks (consistency/fanout_tasks.py): the segment tasks any worker takes.
app.autodiscover_tasks(related_name="fanout_tasks")
