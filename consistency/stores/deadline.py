"""A client-side deadline for PostgreSQL: no call waits on the server longer than the statement
timeout plus a grace, and no connection takes longer than the connect timeout to set up.

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
connection is unusable from then on (Django closes it).

The statement timeout is the one the connection's libpq ``options`` set
(DATABASE_STATEMENT_TIMEOUT); when they set none, the one the server gives the session (a
role's or database's ``statement_timeout``, read once per connection with ``SHOW``). A
connection with neither gets no deadline, and its waits are psycopg's own.

Connecting has two steps. psycopg bounds the start-up handshake by ``connect_timeout``
(DATABASE_CONNECT_TIMEOUT); then Django runs its set-up statements (``SET TIME ZONE``, ``SET
ROLE``), which nothing bounds, before anything else sees the connection. The deadline is
installed at the start of that set-up, by wrapping the PostgreSQL backend's
``_configure_connection`` (the one function Django runs on every new connection, pooled or
not; ``connection_created`` fires after the set-up, and for every checkout from a pool): each
set-up wait, the ``SHOW`` included, gets the connect timeout as its deadline, and then the
statement deadline takes over. Wrapping a wait rather than using a Django ``execute_wrapper``
also covers the engine's raw psycopg cursors, whose server-side fetches and COPY blocks never
pass through ``execute``. One wait is one statement except in ``executemany`` (one wait for
all of its statements), which the project does not use on PostgreSQL.

The deadline is fixed per connection when it is set up: a later ``SET statement_timeout`` in
the session does not move it (the project issues none).
"""

from __future__ import annotations

import functools
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
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql.base import DatabaseWrapper
from psycopg.conninfo import timeout_from_conninfo

logger = logging.getLogger(__name__)

_TIMEOUT = re.compile(r"statement_timeout\s*=\s*'?(\d+(?:\.\d+)?)\s*(ms|s|min|h|d)?'?")
_SHOWN = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|min|h|d)?")  # SHOW statement_timeout: 0, 1500ms, 5min
_UNIT_SECONDS = {None: 0.001, "ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_INSTALLED = "_consistency_deadline"  # attribute marking a connection (or the backend) already wrapped
SETTING_UP = "while setting up the connection (the connect timeout, DATABASE_CONNECT_TIMEOUT)"


class QueryDeadlineExceeded(psycopg.OperationalError):
    """A PostgreSQL call got no answer within its deadline; the watchdog closed its socket."""

    def __init__(self, alias: str, seconds: float, reason: str) -> None:
        super().__init__(
            f"no answer within {seconds:g} s {reason}: the server or the network to it stalled;"
            " the connection was closed"
        )
        self.database_alias = alias
        self.seconds = seconds


def _options_timeout(options: str) -> float | None:
    found = _TIMEOUT.findall(options or "")
    if not found:
        return None
    value, unit = found[-1]  # the server applies the last -c of a name
    return float(value) * _UNIT_SECONDS[unit or None]


def statement_timeout_of(options: str) -> float:
    """The ``statement_timeout`` (seconds; 0: none) a libpq ``options`` string sets."""
    return _options_timeout(options) or 0.0


def shown_seconds(value: str) -> float:
    """Seconds in a ``SHOW statement_timeout`` answer (``0``, ``1500ms``, ``5s``, ``90min``)."""
    found = _SHOWN.fullmatch(value.strip())
    if found is None:
        raise ValueError(f"unexpected statement_timeout {value!r}")
    number, unit = found.groups()
    return float(number) * _UNIT_SECONDS[unit]


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


class _Deadline:
    """The deadline of one connection's waits: ``seconds`` (0: none), and why, for the error."""

    __slots__ = ("reason", "seconds")

    def __init__(self, seconds: float, reason: str) -> None:
        self.seconds = seconds
        self.reason = reason


def _guard(connection: psycopg.Connection[Any], alias: str, deadline: _Deadline) -> None:
    """Register every wait of ``connection`` with the watchdog, for ``deadline.seconds`` as
    they are when the wait begins."""
    original: Callable[..., Any] = connection.wait

    def wait(gen: Any, *args: Any, **kwargs: Any) -> Any:
        seconds, reason = deadline.seconds, deadline.reason
        if not seconds:
            return original(gen, *args, **kwargs)
        try:
            fd = connection.pgconn.socket
        except psycopg.OperationalError:
            return original(gen, *args, **kwargs)  # no socket: psycopg raises its own error
        watch = WATCHDOG.start(seconds, fd)
        try:
            return original(gen, *args, **kwargs)
        except psycopg.Error as exc:
            if watch.fired:
                raise QueryDeadlineExceeded(alias, seconds, reason) from exc
            raise
        finally:
            WATCHDOG.finish(watch)

    connection.wait = wait  # type: ignore[method-assign]


def _statement_timeout(connection: psycopg.Connection[Any]) -> tuple[float, bool]:
    """``connection``'s statement timeout (seconds; 0: none), and whether the server was asked
    for it (its ``options`` set none)."""
    configured = _options_timeout(connection.info.options)
    if configured is not None:
        return configured, False
    row = connection.execute("SHOW statement_timeout").fetchone()
    return (shown_seconds(str(row[0])) if row else 0.0), True


def set_up(
    connection: psycopg.Connection[Any], alias: str, grace: float, configure: Callable[[], bool]
) -> bool:
    """Run Django's set-up of a new ``connection`` (``configure``) under the connect timeout,
    then give its waits their statement deadline; returns whether a commit is due (as
    ``configure`` does)."""
    if getattr(connection, _INSTALLED, False):
        return configure()
    setattr(connection, _INSTALLED, True)
    params: dict[str, str | int | None] = {**connection.info.get_parameters()}
    deadline = _Deadline(float(timeout_from_conninfo(params)), SETTING_UP)  # psycopg's own
    _guard(connection, alias, deadline)
    commit = configure()
    statement_timeout, asked = _statement_timeout(connection)
    if statement_timeout:
        source = "the server's statement timeout" if asked else "statement timeout"
        deadline.seconds = statement_timeout + grace
        deadline.reason = f"({source} {statement_timeout:g} s + DATABASE_CLIENT_TIMEOUT_GRACE)"
    else:
        del connection.wait  # no deadline: psycopg's own method again, at no cost per call
    # SHOW opened a transaction on a connection outside autocommit: Django commits when told to.
    return commit or (asked and not connection.autocommit)


def connect() -> None:
    """Put the deadline on every PostgreSQL connection Django opens from now on."""
    configure = getattr(DatabaseWrapper, "_configure_connection", None)
    if configure is None:
        raise ImproperlyConfigured(
            "consistency.stores.deadline wraps the PostgreSQL backend's _configure_connection,"
            " which this Django version does not have: connections would get no deadline"
        )
    if getattr(configure, _INSTALLED, False):
        return

    @functools.wraps(configure)
    def configure_with_deadline(self: DatabaseWrapper, connection: psycopg.Connection[Any]) -> bool:
        grace = float(getattr(settings, "DATABASE_CLIENT_TIMEOUT_GRACE", 30))
        return set_up(connection, self.alias, grace, lambda: bool(configure(self, connection)))

    setattr(configure_with_deadline, _INSTALLED, True)
    DatabaseWrapper._configure_connection = configure_with_deadline  # type: ignore[attr-defined]
