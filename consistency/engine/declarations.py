"""Parity declarations: what must agree between two sides, as frozen dataclasses.

A declaration is data; ``resolve()`` binds it to models and databases and
raises ``DeclarationError`` naming what is wrong, which the system check
``consistency.E001`` reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from enum import StrEnum
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist
from django.db import connections, models, router

from consistency.engine.findings import Action, AuditContext, Finding
from consistency.engine.normalizers import Normalizer, default_for


class DeclarationError(ValueError):
    """A parity declaration that cannot be run; the message names the problem."""


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class Repair(StrEnum):
    NONE = "none"
    SOURCE_WINS = "source_wins"  # insert missing, update mismatched, delete extra target rows
    DELETE_ORPHAN = "delete_orphan"
    DETACH_ORPHAN = "detach_orphan"  # set the dangling reference to NULL


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a model (``app_label.Model``) on a database alias."""

    model: str
    alias: str | None = None  # None: wherever the router puts the model

    def resolve_model(self, check: str) -> type[models.Model]:
        try:
            return apps.get_model(self.model)
        except (LookupError, ValueError) as exc:
            raise DeclarationError(f"{check}: unknown model {self.model!r}") from exc

    def resolve_alias(self, check: str, model: type[models.Model]) -> str:
        alias = self.alias or router.db_for_read(model)
        if alias not in connections:
            raise DeclarationError(f"{check}: unknown database alias {alias!r} for {self.model}")
        return alias


def model_field(check: str, model: type[models.Model], name: str) -> models.Field:
    try:
        found = model._meta.get_field(name)
    except FieldDoesNotExist as exc:
        raise DeclarationError(f"{check}: {model._meta.label} has no field {name!r}") from exc
    if not isinstance(found, models.Field) or not found.concrete:
        raise DeclarationError(f"{check}: {model._meta.label}.{name} is not a column")
    return found


@dataclass(frozen=True)
class Declaration:
    """Fields every kind shares."""

    name: str
    description: str = ""
    severity: Severity = Severity.ERROR
    tags: tuple[str, ...] = ()

    kind = "declaration"
    #: True when the kind can audit only rows changed since a time (``--since``).
    supports_incremental = False

    @property
    def store(self) -> str:
        return "sql"

    def validate(self) -> None:
        """Raise DeclarationError naming what cannot be resolved."""
        raise NotImplementedError

    def audit(self, ctx: AuditContext) -> tuple[list[Finding], dict[str, Any]]:
        """Confirmed findings, and figures (``compared`` and any others) for the run record."""
        raise NotImplementedError

    def plan_repair(self, findings: Sequence[Finding]) -> list[Action]:
        """The actions that would repair ``findings``; none when the kind cannot repair."""
        return []

    def apply_repair(self, action: Action) -> str:
        """Apply one planned action idempotently; return what happened."""
        raise NotImplementedError

    def verify_repair(self, action: Action) -> bool:
        """Re-read the store: True when the action's drift is gone."""
        raise NotImplementedError

    def transaction_alias(self, action: Action) -> str | None:
        """The database alias whose transaction wraps this action's repair (None: no transaction)."""
        return action.alias


@dataclass(frozen=True)
class RowParity(Declaration):
    """Rows equal across two stores, by key, over mapped and normalised fields.

    ``fields`` maps a source field to the target field that must equal it (a
    sequence means the same names on both sides). ``secret`` fields are compared
    but never shown. ``updated_at`` names each side's change-time column, which
    enables incremental audits and 'in flight' detection.
    """

    source: Side = dc_field(default_factory=lambda: Side(""))
    target: Side = dc_field(default_factory=lambda: Side(""))
    key: tuple[str, ...] = ("pk",)
    fields: Mapping[str, str] | Sequence[str] = ()
    normalizers: Mapping[str, Normalizer] = dc_field(default_factory=dict)
    secret: tuple[str, ...] = ()
    copy_on_repair: tuple[str, ...] = ()  # extra source fields a repair copies, never compared
    updated_at: tuple[str, str] | None = None
    repair: Repair = Repair.NONE

    kind = "row"

    @property
    def supports_incremental(self) -> bool:  # type: ignore[override]
        return self.updated_at is not None

    def audit(self, ctx: AuditContext) -> tuple[list[Finding], dict[str, Any]]:
        from consistency.engine.rowdiff import diff_rows, first_pass

        findings, stats = diff_rows(
            bind_row_parity(self),
            started_at=ctx.started_at,
            settle=ctx.settle,
            since=ctx.since,
            progress=ctx.progress,
            strategy=first_pass(self.name),
            cache_key=self.name,
        )
        figures = {
            "compared": stats.compared,
            "segments": stats.segments,
            "rows_fetched": stats.rows_fetched,
            "candidates": stats.candidates,
            "connections": stats.extra.get("connections", 2),
            "in_flight": stats.in_flight,
            "mode": "incremental" if ctx.since else "full",
            "strategy": stats.strategy,
            # Sides proven unchanged since the last audit (no row hashed); a stale range cache.
            **{k: v for k, v in stats.extra.items() if k in ("proven_sides", "stale_cache")},
        }
        return findings, figures

    def plan_repair(self, findings: Sequence[Finding]) -> list[Action]:
        from consistency.engine import repair

        return repair.plan_rows(self, findings)

    def apply_repair(self, action: Action) -> str:
        from consistency.engine import repair

        return repair.apply_row(self, action)

    def verify_repair(self, action: Action) -> bool:
        from consistency.engine import repair

        return repair.verify_row(self, action)

    def field_pairs(self) -> list[tuple[str, str]]:
        if isinstance(self.fields, Mapping):
            return list(self.fields.items())
        return [(name, name) for name in self.fields]

    def validate(self) -> None:
        bind_row_parity(self)


@dataclass(frozen=True)
class ReferenceParity(Declaration):
    """Every ``child.field`` resolves to a ``parent`` row, across databases if need be."""

    child: Side = dc_field(default_factory=lambda: Side(""))
    field: str = ""
    parent: Side = dc_field(default_factory=lambda: Side(""))
    parent_key: str = "pk"
    repair: Repair = Repair.NONE

    kind = "reference"

    def audit(self, ctx: AuditContext) -> tuple[list[Finding], dict[str, Any]]:
        from consistency.engine.refcheck import find_orphans

        return find_orphans(self, settle=ctx.settle, progress=ctx.progress)

    def plan_repair(self, findings: Sequence[Finding]) -> list[Action]:
        from consistency.engine import repair

        return repair.plan_references(self, findings)

    def apply_repair(self, action: Action) -> str:
        from consistency.engine import repair

        return repair.apply_reference(self, action)

    def verify_repair(self, action: Action) -> bool:
        from consistency.engine import repair

        return repair.verify_reference(self, action)

    def validate(self) -> None:
        child = self.child.resolve_model(self.name)
        self.child.resolve_alias(self.name, child)
        model_field(self.name, child, self.field)
        parent = self.parent.resolve_model(self.name)
        self.parent.resolve_alias(self.name, parent)
        if self.parent_key != "pk":
            model_field(self.name, parent, self.parent_key)
        if self.repair not in (Repair.NONE, Repair.DELETE_ORPHAN, Repair.DETACH_ORPHAN):
            raise DeclarationError(f"{self.name}: repair {self.repair!r} does not apply to references")
        if self.repair == Repair.DETACH_ORPHAN and not model_field(self.name, child, self.field).null:
            raise DeclarationError(f"{self.name}: cannot detach orphans, {self.field} is not nullable")


@dataclass(frozen=True)
class Invariant(Declaration):
    """A rule inside one store: rows returned by ``violations`` break it.

    ``violations(queryset)`` returns rows (dicts) each holding ``key``; the
    runner calls it with the side's queryset on its alias.
    """

    side: Side = dc_field(default_factory=lambda: Side(""))
    violations: Any = None  # Callable[[QuerySet], Iterable[dict[str, Any]]]
    fields: tuple[str, ...] = ()

    kind = "invariant"

    def audit(self, ctx: AuditContext) -> tuple[list[Finding], dict[str, Any]]:
        from consistency.engine.refcheck import find_violations

        return find_violations(self, settle=ctx.settle)

    def validate(self) -> None:
        model = self.side.resolve_model(self.name)
        self.side.resolve_alias(self.name, model)
        for name in self.fields:
            model_field(self.name, model, name)
        if not callable(self.violations):
            raise DeclarationError(f"{self.name}: violations must be a callable taking a queryset")


@dataclass(frozen=True)
class BoundField:
    """A compared field, bound to its source and target columns."""

    label: str
    source: models.Field
    target: models.Field
    normalizer: Normalizer
    secret: bool


@dataclass(frozen=True)
class BoundRowParity:
    """A row parity declaration bound to models, aliases and columns."""

    decl: RowParity
    source_model: type[models.Model]
    target_model: type[models.Model]
    source_alias: str
    target_alias: str
    source_key: tuple[models.Field, ...]
    target_key: tuple[models.Field, ...]
    fields: tuple[BoundField, ...]
    source_updated: models.Field | None
    target_updated: models.Field | None


def _key_fields(check: str, model: type[models.Model], key: Sequence[str]) -> tuple[models.Field, ...]:
    if not key:
        raise DeclarationError(f"{check}: no key")
    bound = tuple(model._meta.pk if name == "pk" else model_field(check, model, name) for name in key)
    if len(bound) == 1 and not (bound[0].primary_key or bound[0].unique):
        raise DeclarationError(f"{check}: key {key[0]!r} of {model._meta.label} is not unique")
    if len(bound) > 1 and not _composite_unique(model, [f.name for f in bound]):
        raise DeclarationError(f"{check}: key {tuple(key)!r} of {model._meta.label} is not unique")
    return bound


def _composite_unique(model: type[models.Model], names: list[str]) -> bool:
    wanted = set(names)
    together = [set(group) for group in model._meta.unique_together]
    together += [
        set(c.fields)
        for c in model._meta.constraints
        if isinstance(c, models.UniqueConstraint) and not c.condition
    ]
    return any(group <= wanted for group in together)


def bind_row_parity(decl: RowParity) -> BoundRowParity:
    """Resolve ``decl`` against the installed models; raise DeclarationError if it can't be."""
    source_model = decl.source.resolve_model(decl.name)
    target_model = decl.target.resolve_model(decl.name)
    source_alias = decl.source.resolve_alias(decl.name, source_model)
    target_alias = decl.target.resolve_alias(decl.name, target_model)
    source_key = _key_fields(decl.name, source_model, decl.key)
    target_key = _key_fields(decl.name, target_model, decl.key)
    pairs = decl.field_pairs()
    if not pairs:
        raise DeclarationError(f"{decl.name}: no fields to compare")
    bound: list[BoundField] = []
    for source_name, target_name in pairs:
        source = model_field(decl.name, source_model, source_name)
        target = model_field(decl.name, target_model, target_name)
        normalizer = decl.normalizers.get(source_name) or default_for(source)
        bound.append(BoundField(source_name, source, target, normalizer, source_name in decl.secret))
    for name in decl.copy_on_repair:
        model_field(decl.name, source_model, name)
        model_field(decl.name, target_model, name)
    unknown = set(decl.normalizers) - {s for s, _ in pairs}
    if unknown:
        raise DeclarationError(f"{decl.name}: normalizers for unmapped fields {sorted(unknown)}")
    source_updated = target_updated = None
    if decl.updated_at:
        source_updated = model_field(decl.name, source_model, decl.updated_at[0])
        target_updated = model_field(decl.name, target_model, decl.updated_at[1])
    if decl.repair not in (Repair.NONE, Repair.SOURCE_WINS):
        raise DeclarationError(f"{decl.name}: repair {decl.repair!r} does not apply to row parity")
    return BoundRowParity(
        decl,
        source_model,
        target_model,
        source_alias,
        target_alias,
        source_key,
        target_key,
        tuple(bound),
        source_updated,
        target_updated,
    )
