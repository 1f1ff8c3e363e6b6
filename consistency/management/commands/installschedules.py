"""``manage.py installschedules``: install the default Celery beat schedules (idempotent)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from consistency.sync.schedules import DEFAULT_SCHEDULES, install_schedules


class Command(BaseCommand):
    help = "Install the default periodic tasks (audits, outbox sweep, analytics export); keeps existing ones."

    def handle(self, *args: Any, **options: Any) -> None:
        created = install_schedules()
        for name in created:
            self.stdout.write(f"created {name}")
        self.stdout.write(
            f"{len(created)} created, {len(DEFAULT_SCHEDULES) - len(created)} already installed"
        )
