"""A client-side deadline for PostgreSQL: no call waits on the server longer than the statement
timeout plus a grace.

The server's ``statement_timeout`` ends a slow statement, and TCP keepalives end a connection
whose network went silent; neither helps when the peer's TCP stays up but no answer comes (a
hung proxy, a frozen backend process): the kernel acknowledges every keepalive probe, the
server's timeout error never arrives, and psycopg has no timeout of its own, so the client
would wait forever.

Every wait of a PostgreSQL connection on its server (psycopg's ``Connection.wait``: a
statement and its results, a server-side cursor's fetch, a COPY block, a commit) is
registered with one watchdog thread. A wait still running ``statement timeout +
DATABASE_CLIENT_TIMEOUT_GRACE`` seconds after it began has its socket shut down: the blocked
call raises ``QueryDeadlineExceeded`` (a ``psycopg.OperationalError``; Django wraps it in its
own ``OperationalError`` on a Django cursor) naming the alias and the deadline, and the
connection is unusable from then on (Django closes it). Connections without a statement
timeout (``DATABASE_STATEMENT_TIMEOUT=0``) get no deadline.

It is installed on each new connection by a ``connection_created`` receiver, on the psycopg
connection rather than as a Django ``execute_wrapper``: the engine's scan reads through raw
psycopg cursors, and a server-side cursor's fetches and a COPY's blocks never pass through
``execute``. One wait is one statement except in ``executemany`` (one wait for all of its
statements), which the project does not use on PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from django.conf import settings
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

logger = logging.getLogger(__name__)

_TIMEOUT = re.compile(r"statement_timeout\s*=\s*'?(\d+(?:\.\d+)?)\s*(ms|s|min|h|d)?'?")
_UNIT_SECONDS = {None: 0.001, "ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_INSTALLED = "_consistency_deadline"  # attribute marking a psycopg connection already wrapped


class QueryDeadlineExceeded(psycopg.OperationalError):
    """A PostgreSQL call got no answer within its deadline; the watchdog closed its socket."""

    def __init__(self, alias: str, seconds: float, statement_timeout: float) -> None:
        super().__init__(
            f"no answer within {seconds:g} s (statement timeout {statement_timeout:g} s"
            f" + DATABASE_CLIENT_TIMEOUT_GRACE): the server or the network to it stalled;"
            " the connection was closed"
        )
        self.database_alias = alias
        self.seconds = seconds


def statement_timeout_of(options: str) -> float:
    """The ``statement_timeout`` (seconds; 0: none) a libpq ``options`` string sets."""
    found = _TIMEOUT.findall(options or "")
    if not found:
        return 0.0
    value, unit = found[-1]  # the server applies the last -c of a name
    return float(value) * _UNIT_SECONDS[unit or None]


class _Wait:
    __slots__ = ("deadline", "fd", "fired")

    def __init__(self, deadline: float, fd: int) -> None:
        self.deadline = deadline
        self.fd = fd
        self.fired = False


class Watchdog:
    """One thread that shuts down the socket of any registered wait past its deadline.

    Registering and clearing a wait is a dict insert and delete under a lock; the thread
    wakes when the earliest deadline is due (and when a new wait might be earlier).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waits: dict[int, _Wait] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, seconds: float, fd: int) -> _Wait:
        wait = _Wait(time.monotonic() + seconds, fd)
        with self._lock:
            self._waits[id(wait)] = wait
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pg-deadline", daemon=True)
                self._thread.start()
            elif len(self._waits) == 1:
                self._wake.set()  # the thread sleeps without a timeout when nothing is registered
        return wait

    def finish(self, wait: _Wait) -> None:
        # Under the lock: once this returns the watchdog no longer touches ``wait.fd``, which
        # the caller may then close (and the OS give to another socket).
        with self._lock:
            self._waits.pop(id(wait), None)

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                for key, wait in list(self._waits.items()):
                    if wait.deadline <= now:
                        del self._waits[key]
                        wait.fired = True
                        _shut_down(wait.fd)
                earliest = min((w.deadline for w in self._waits.values()), default=None)
                self._wake.clear()
            # Deadlines all have one length per alias, so a new wait is rarely the earliest;
            # waking at least every second covers aliases with different timeouts.
            timeout = None if earliest is None else min(max(earliest - time.monotonic(), 0.0), 1.0)
            self._wake.wait(timeout)


def _shut_down(fd: int) -> None:
    """Shut the socket down (both ways) through a duplicate of its descriptor: the blocked
    wait sees end-of-file at once, and psycopg still owns (and later closes) ``fd``."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:  # already closed by the peer or the owner
        logger.debug("deadline: shutting down fd %s failed: %s", fd, exc)


WATCHDOG = Watchdog()


def install(connection: psycopg.Connection[Any], alias: str, grace: float) -> None:
    """Give every wait of ``connection`` a deadline of its statement timeout plus ``grace``
    (nothing when it has no statement timeout). Idempotent (a pooled connection is handed
    out again and again)."""
    if getattr(connection, _INSTALLED, False):
        return
    statement_timeout = statement_timeout_of(connection.info.options)
    setattr(connection, _INSTALLED, True)
    if not statement_timeout:
        return
    seconds = statement_timeout + grace
    original: Callable[..., Any] = connection.wait

    def wait(gen: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            fd = connection.pgconn.socket
        except psycopg.OperationalError:
            return original(gen, *args, **kwargs)  # no socket: psycopg raises its own error
        watch = WATCHDOG.start(seconds, fd)
        try:
            return original(gen, *args, **kwargs)
        except psycopg.Error as exc:
            if watch.fired:
                raise QueryDeadlineExceeded(alias, seconds, statement_timeout) from exc
            raise
        finally:
            WATCHDOG.finish(watch)

    connection.wait = wait  # type: ignore[method-assign]


def _on_connection_created(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    if connection.vendor != "postgresql":
        return
    grace = float(getattr(settings, "DATABASE_CLIENT_TIMEOUT_GRACE", 30))
    install(connection.connection, connection.alias, grace)


def connect() -> None:
    """Install the deadline on every PostgreSQL connection Django opens from now on."""
    connection_created.connect(_on_connection_created, dispatch_uid="consistency.stores.deadline")
