"""What a check finds, as plain frozen dataclasses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("missing", "extra", "mismatch", "orphan", "stale", "invariant")


@dataclass(frozen=True)
class Finding:
    """One confirmed drift: ``source`` and ``target`` are already redacted."""

    check: str
    kind: str
    key: str
    fields: tuple[str, ...] = ()
    source: dict[str, Any] | None = None
    target: dict[str, Any] | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "fields": list(self.fields),
            "source": self.source,
            "target": self.target,
            "detail": self.detail,
        }


@dataclass
class CheckResult:
    """The outcome of one check in one run."""

    name: str
    kind: str
    status: str = "ok"  # ok | drift | error
    compared: int = 0
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    duration: float = 0.0

    @property
    def drift_count(self) -> int:
        return len(self.findings)


@dataclass(frozen=True)
class AuditContext:
    """What a check needs to know about the run it is part of."""

    started_at: dt.datetime
    settle: float = 0.0
    since: dt.datetime | None = None  # None: a full audit
    progress: Callable[[int], None] | None = None


@dataclass(frozen=True)
class Action:
    """One planned repair in one store; ``changes`` is redacted, for display."""

    check: str
    kind: str
    key: str
    action: str  # insert | update | delete | detach | ... (each kind names its own)
    table: str
    alias: str  # the database alias, or the store's name for stores without transactions
    changes: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.changes.items())
        return f"{self.action} {self.table}@{self.alias} key={self.key}" + (f" set {shown}" if shown else "")
