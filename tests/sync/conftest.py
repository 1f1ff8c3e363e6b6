"""Fixtures for sync tests: committed data on both aliases and a real Celery worker.

The worker runs in a thread of the test process (``start_worker``) and consumes
the real broker named by CELERY_BROKER_URL; tests are ``transaction=True`` so it
sees what they commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from celery.contrib.testing.worker import start_worker
from django.core.cache import caches
from django.db import connections

from project.celery import app as celery_app

T = TypeVar("T")
DATABASES = ["default", "auth"]
sync_db = pytest.mark.django_db(transaction=True, databases=DATABASES)


def wait_until(probe: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(0.05)


def purge_broker() -> int:
    """Drop every message waiting in the broker (triggers left by earlier tests)."""
    with celery_app.connection_for_write() as conn:
        return int(celery_app.control.purge(connection=conn) or 0)


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    caches["default"].clear()
    yield
    caches["default"].clear()


@pytest.fixture
def worker(transactional_db: None) -> Iterator[object]:
    """A real Celery worker (solo pool, in a thread) on the configured broker."""
    assert not celery_app.conf.task_always_eager, "sync tests need a broker (CELERY_BROKER_URL)"
    purge_broker()
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=30) as w:
        yield w
    for alias in connections:
        connections[alias].close()
