"""The one error every store adapter raises when its store fails."""

from __future__ import annotations


class StoreError(Exception):
    """A store could not be reached or failed a request; ``store`` names it."""

    def __init__(self, store: str, message: str) -> None:
        super().__init__(f"{store}: {message}")
        self.store = store
        self.message = message
