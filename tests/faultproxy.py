"""A small TCP proxy that injects network faults between the app and a real store.

Stdlib only, one thread per direction of each connection. Point the app at
``proxy.port`` instead of the store's port, then change ``proxy.mode`` at any
time; the new mode applies to bytes not yet forwarded, on open connections too:

- ``pass``: forward everything (after ``latency`` seconds per chunk, if set);
- ``reset``: close every connection abruptly (RST) and refuse new ones the same way;
- ``blackhole``: accept and read, forward nothing, answer nothing (a stalled store);
- ``close_after``: forward ``close_after_bytes`` more bytes from the server, then reset
  the connection (a store dropping mid-reply);
- ``vanish``: a silent network partition on the open connections: nothing more is
  forwarded, and the proxy's end of each client connection disappears without a FIN
  or RST (``TCP_REPAIR``, which needs CAP_NET_ADMIN; see ``vanish_supported``). The
  client notices only when it sends something, such as a TCP keepalive probe; it gets
  an RST then (in a real partition the probe goes unanswered and the connection is
  dropped after ``keepalives_count`` probes). Until it sends, it waits: a client
  blocked reading a reply waits forever unless keepalives are on. New connections
  are treated as in ``blackhole``.
- ``stall_after``: forward until the store has sent ``stall_after`` (a byte string, such as
  PostgreSQL's ready-for-query message ending a connection's start-up), then switch to
  ``blackhole``: a store that stalls at a chosen point of its protocol.

``blackhole`` stalls the bytes, not the TCP connection: the proxy's kernel still
acknowledges everything, keepalive probes included, so only a timeout the client or the
server runs itself (connect, statement, socket timeouts) ends the wait.

``reset_all()`` cuts the open connections at once, whatever the mode (a restart).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Literal

Mode = Literal["pass", "reset", "blackhole", "close_after", "vanish", "stall_after"]

_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
_TCP_REPAIR = 19  # linux/tcp.h: a socket in repair mode closes without sending anything
_STALLED = ("blackhole", "vanish")


def vanish_supported() -> bool:
    """Whether this process may put a TCP socket in repair mode (``vanish`` needs it)."""
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()):
        server, _ = listener.accept()
        with server:
            try:
                server.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR, 1)
            except OSError:
                return False
            server.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR, 0)
    return True


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = "pass"
        self.latency = 0.0
        self.close_after_bytes = 0
        self.stall_after = b""
        self.connections = 0  # accepted so far
        self.server_bytes = 0  # forwarded from the store so far
        self._lock = threading.Lock()
        self._server_bytes_left: int | None = None
        self._open: set[socket.socket] = set()
        self._clients: set[socket.socket] = set()  # the app's ends (``vanish`` silences these)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"faultproxy:{self.port}", daemon=True)
        self._thread.start()

    # -- control -----------------------------------------------------------
    def set(
        self, mode: Mode, *, latency: float = 0.0, close_after_bytes: int = 0, stall_after: bytes = b""
    ) -> None:
        assert (mode == "stall_after") == bool(stall_after), "stall_after needs its byte string"
        with self._lock:
            self.mode = mode
            self.latency = latency
            self.close_after_bytes = close_after_bytes
            self.stall_after = stall_after
            self._server_bytes_left = close_after_bytes if mode == "close_after" else None
        if mode == "reset":
            self.reset_all()
        if mode == "vanish":  # wait until the open connections are gone (their pumps close them)
            deadline = time.monotonic() + 5
            while self._clients and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not self._clients, "the proxy's connections did not vanish"

    def heal(self) -> None:
        self.set("pass")

    @contextlib.contextmanager
    def fault(self, mode: Mode, **kwargs: float) -> Iterator[FaultProxy]:
        self.set(mode, **kwargs)  # type: ignore[arg-type]
        try:
            yield self
        finally:
            self.heal()

    def reset_all(self) -> None:
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            _abort(sock)

    def close(self) -> None:
        self._stopped.set()
        _abort(self._listener)
        self.reset_all()
        self._thread.join(timeout=5)

    # -- plumbing ----------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.mode == "reset":
                _abort(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.mode in _STALLED:
            # A stalled store: the connection is accepted, nothing ever comes back.
            self._track(client)
            self._drain(client)
            return
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _abort(client)
            return
        server.settimeout(None)
        self._track(client, server)
        with self._lock:
            self._clients.add(client)
        threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
        self._pump(server, client, True)

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._open.update(socks)

    def _drain(self, sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
        _abort(sock)

    def _stall_point(self, tail: bytes, data: bytes) -> int:
        """Where in ``data`` the ``stall_after`` bytes end (-1: not in ``tail + data``); the proxy
        switches to ``blackhole`` when they are found."""
        with self._lock:
            if self.mode != "stall_after":
                return -1
            found = (tail + data).find(self.stall_after)
            if found < 0:
                return -1
            self.mode = "blackhole"
            return found + len(self.stall_after) - len(tail)

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        tail = b""  # the end of the store's last chunk: ``stall_after`` may span two chunks
        try:
            while True:
                # Wait in select, not recv, so that ``vanish`` can take the socket from this
                # thread: a socket closed while another thread is blocked reading it stays open.
                if not select.select([src], [], [], 0.1)[0]:
                    if self.mode == "vanish":
                        return
                    continue
                data = src.recv(65536)
                if not data:
                    break
                if from_server and self.mode == "stall_after":
                    end = self._stall_point(tail, data)
                    tail = (tail + data)[-64:]
                    if end >= 0:  # forward up to the stall point; hold the rest
                        dst.sendall(data[:end])
                        with self._lock:
                            self.server_bytes += end
                        data = data[end:]
                        if not data:
                            continue
                while self.mode == "blackhole":
                    if self._stopped.wait(0.05):
                        return
                if self.mode == "vanish":
                    return
                if self.latency:
                    time.sleep(self.latency)
                if from_server and self.mode == "close_after":
                    with self._lock:
                        left = self._server_bytes_left or 0
                        self._server_bytes_left = max(0, left - len(data))
                    if len(data) >= left:
                        dst.sendall(data[:left])
                        break
                if self.mode == "reset":
                    break
                dst.sendall(data)
                if from_server:
                    with self._lock:
                        self.server_bytes += len(data)
        except (OSError, ValueError):  # ValueError: select on a socket the other pump closed
            pass
        finally:
            if self.mode == "vanish":
                # Each pump closes only the socket it reads; the app's end silently.
                with self._lock:
                    client = src in self._clients
                    self._clients.discard(src)
                    self._open.discard(src)
                if client:
                    _vanish(src)
                else:
                    _abort(src)
            else:
                _abort(src)
                _abort(dst)
                with self._lock:
                    self._open.discard(src)
                    self._open.discard(dst)
                    self._clients.discard(src)
                    self._clients.discard(dst)


def _abort(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _vanish(sock: socket.socket) -> None:
    """Close ``sock`` without a FIN or RST: for the peer the connection is still open."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR, 1)
    with contextlib.suppress(OSError):
        sock.close()
