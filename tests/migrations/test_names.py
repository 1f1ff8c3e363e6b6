"""Migration files: none missing for the models, and no two of an app sharing a number."""

from __future__ import annotations

from collections import Counter
from io import StringIO

import pytest
from django.core.management import call_command

from tests.migrations.conftest import disk_loader, is_project_app

pytestmark = [pytest.mark.migration_test, pytest.mark.sqlite]


@pytest.mark.django_db(databases=["default", "auth"])
def test_makemigrations_check__finds_nothing_missing() -> None:
    out = StringIO()
    # --check exits with SystemExit(1) when a model change lacks a migration.
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def test_migration_numbers__unique_within_each_project_app() -> None:
    # Third-party apps are theirs to number (django_celery_beat ships three 0006s, merged).
    numbers = Counter(
        (label, name.split("_", 1)[0]) for label, name in disk_loader().disk_migrations if is_project_app(label)
    )
    assert {label for label, _ in numbers} >= {"auth_service", "backend", "consistency"}
    assert [key for key, count in numbers.items() if count > 1] == []
