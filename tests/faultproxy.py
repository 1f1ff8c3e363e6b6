"""A small TCP proxy that injects network faults between the app and a real store.

Stdlib only, one thread per direction of each connection. Point the app at
``proxy.port`` instead of the store's port, then change ``proxy.mode`` at any
time; the new mode applies to bytes not yet forwarded, on open connections too:

- ``pass``: forward everything (after ``latency`` seconds per chunk, if set);
- ``reset``: close every connection abruptly (RST) and refuse new ones the same way;
- ``blackhole``: accept and read, forward nothing, answer nothing (a stalled store);
- ``close_after``: forward ``close_after_bytes`` more bytes from the server, then reset
  the connection (a store dropping mid-reply).

``reset_all()`` cuts the open connections at once, whatever the mode (a restart).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Literal

Mode = Literal["pass", "reset", "blackhole", "close_after"]

_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = "pass"
        self.latency = 0.0
        self.close_after_bytes = 0
        self.connections = 0  # accepted so far
        self.server_bytes = 0  # forwarded from the store so far
        self._lock = threading.Lock()
        self._server_bytes_left: int | None = None
        self._open: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"faultproxy:{self.port}", daemon=True)
        self._thread.start()

    # -- control -----------------------------------------------------------
    def set(self, mode: Mode, *, latency: float = 0.0, close_after_bytes: int = 0) -> None:
        with self._lock:
            self.mode = mode
            self.latency = latency
            self.close_after_bytes = close_after_bytes
            self._server_bytes_left = close_after_bytes if mode == "close_after" else None
        if mode == "reset":
            self.reset_all()

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
        if self.mode == "blackhole":
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

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.mode == "blackhole":
                    if self._stopped.wait(0.05):
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
        except OSError:
            pass
        finally:
            _abort(src)
            _abort(dst)
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)


def _abort(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
