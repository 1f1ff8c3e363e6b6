"""One process-wide store per configuration, rebuilt when its settings change."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

from django.core.signals import setting_changed


class Closable(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=Closable)


class CachedStore(Generic[S]):
    """Builds the store for the current settings once, and closes it when they change."""

    def __init__(
        self, key: Callable[[], Hashable], build: Callable[..., S], settings: tuple[str, ...]
    ) -> None:
        self._key, self._build, self._settings = key, build, settings
        self._lock = threading.Lock()
        self._cached: tuple[Any, S] | None = None
        setting_changed.connect(self._changed, weak=False)
        # Closed at exit, not left to garbage collection (which manage.py skips: gc.freeze), so
        # that chDB shuts its engine down before the library's own destructors run.
        atexit.register(self.close)

    def get(self) -> S:
        key = self._key()
        with self._lock:
            if self._cached is not None and self._cached[0] == key:
                return self._cached[1]
            if self._cached is not None:
                self._cached[1].close()
            store = self._build(*key) if isinstance(key, tuple) else self._build(key)
            self._cached = (key, store)
            return store

    def close(self) -> None:
        """Close and forget the store; the next ``get()`` builds a new one."""
        with self._lock:
            if self._cached is not None:
                self._cached[1].close()
                self._cached = None

    def _changed(self, *, setting: str, **kwargs: Any) -> None:
        if setting in self._settings:
            self.close()
