"""Schema drift as findings: each database's live schema against its applied migrations.

``checkconsistency --tag schema`` runs one ``SchemaParity`` a database alias; a
finding's key is ``table``, ``table.column`` or ``table(columns)`` and its kind is
``invariant`` (the rule being "the schema is what the migrations say").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connections

from consistency.engine.declarations import Declaration, DeclarationError, Severity
from consistency.engine.findings import AuditContext, Finding
from consistency.engine.registry import register

from .compare import Difference, compare
from .expected import applied_state, expected_tables
from .live import live_tables


def schema_differences(alias: str) -> tuple[list[Difference], int]:
    """The differences on ``alias``, and how many tables were compared."""
    expected = expected_tables(alias, applied_state(alias))
    live = live_tables(alias)
    return compare(expected, live), len(expected.keys() | live.keys())


@dataclass(frozen=True)
class SchemaParity(Declaration):
    """The tables on ``alias`` are exactly those its applied migrations create."""

    alias: str = "default"

    kind = "schema"

    def validate(self) -> None:
        if self.alias not in connections:
            raise DeclarationError(f"{self.name}: unknown database alias {self.alias!r}")

    def audit(self, ctx: AuditContext) -> tuple[list[Finding], dict[str, Any]]:
        differences, compared = schema_differences(self.alias)
        findings = [
            Finding(
                check=self.name,
                kind="invariant",
                key=d.key,
                source={"problem": d.problem, "database": self.alias},
                detail=d.detail,
            )
            for d in differences
        ]
        return findings, {"compared": compared}


register(
    *(
        SchemaParity(
            name=f"schema_{alias}",
            description=f"The tables on database {alias!r} match its applied migrations.",
            alias=alias,
            severity=Severity.ERROR,
            tags=("schema",),
        )
        for alias in ("default", "auth")
    )
)
