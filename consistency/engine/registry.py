"""The parity registry, filled from the ``parity.py`` module of every installed app."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from django.utils.module_loading import autodiscover_modules

from consistency.engine.declarations import Declaration


class AlreadyRegistered(ValueError):
    pass


class ParityRegistry:
    """Holds declarations by name, like ``admin.site`` holds model admins."""

    def __init__(self) -> None:
        self._checks: dict[str, Declaration] = {}
        self._discovered = False

    def register(self, *declarations: Declaration) -> None:
        for decl in declarations:
            if decl.name in self._checks and self._checks[decl.name] != decl:
                raise AlreadyRegistered(f"a parity check named {decl.name!r} is already registered")
            self._checks[decl.name] = decl

    def unregister(self, name: str) -> None:
        self._checks.pop(name, None)

    def autodiscover(self) -> None:
        if not self._discovered:
            autodiscover_modules("parity")
            self._discovered = True

    def __iter__(self) -> Iterator[Declaration]:
        self.autodiscover()
        return iter(sorted(self._checks.values(), key=lambda d: d.name))

    def __contains__(self, name: object) -> bool:
        self.autodiscover()
        return name in self._checks

    def get(self, name: str) -> Declaration:
        self.autodiscover()
        return self._checks[name]

    def select(self, names: Iterable[str] = (), tags: Iterable[str] = ()) -> list[Declaration]:
        """Declarations named in ``names`` and carrying every tag in ``tags``; all when both empty.

        Raises KeyError naming the unknown checks.
        """
        self.autodiscover()
        names, tags = list(names), set(tags)
        unknown = [n for n in names if n not in self._checks]
        if unknown:
            raise KeyError(", ".join(unknown))
        chosen = [self._checks[n] for n in names] if names else list(self)
        return [d for d in chosen if tags <= set(d.tags) | {d.kind}]


registry = ParityRegistry()
register = registry.register
