"""Repairs: plan first, then apply in a transaction, idempotently, and re-verify.

- Row parity, ``source_wins``: insert the missing target row, update the
  mismatched fields, delete the extra target row.
- Reference parity: ``delete_orphan`` deletes the child row,
  ``detach_orphan`` sets its reference to NULL.
Each action is written so that running it twice changes nothing the second
time; each repaired key is re-read afterwards and the drift marked repaired
only if both sides now agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from django.db import models, router, transaction
from django.utils import timezone

from consistency.engine.declarations import (
    Declaration,
    ReferenceParity,
    Repair,
    RowParity,
    bind_row_parity,
)
from consistency.engine.findings import Action, Finding
from consistency.engine.redact import mask_urls, redact
from consistency.engine.rowdiff import make_sides
from consistency.engine.tablesql import Table, saves_plainly
from consistency.models import Drift, RepairLog


def plan(decl: Declaration, findings: Sequence[Finding]) -> list[Action]:
    """The actions that would repair ``findings``; empty when the check declares no repair."""
    if getattr(decl, "repair", Repair.NONE) == Repair.NONE:
        return []
    return decl.plan_repair(findings)


def plan_rows(decl: RowParity, findings: Sequence[Finding]) -> list[Action]:
    bound = bind_row_parity(decl)
    table = bound.target_model._meta.db_table
    secret = [f.label for f in bound.fields if f.secret] + list(decl.copy_on_repair)
    actions = []
    for f in findings:
        if f.kind == "missing":
            act, changes = "insert", f.source or {}
        elif f.kind == "mismatch":
            act, changes = "update", {k: (f.source or {}).get(k) for k in f.fields}
        elif f.kind == "extra":
            act, changes = "delete", {}
        else:
            continue
        actions.append(
            Action(decl.name, f.kind, f.key, act, table, bound.target_alias, redact(changes, secret) or {})
        )
    return actions


def plan_references(decl: ReferenceParity, findings: Sequence[Finding]) -> list[Action]:
    child = decl.child.resolve_model(decl.name)
    alias = decl.child.resolve_alias(decl.name, child)
    act = "delete" if decl.repair == Repair.DELETE_ORPHAN else "detach"
    changes: dict[str, Any] = {decl.field: None} if act == "detach" else {}
    return [
        Action(decl.name, f.kind, f.key, act, child._meta.db_table, alias, changes)
        for f in findings
        if f.kind == "orphan"
    ]


def _source_values(bound: Any, key: str) -> dict[str, Any] | None:
    source, _ = make_sides(bound)
    table = Table(bound.source_model, bound.source_alias)
    where, params = table.where_equal(bound.source_key, source.parse_key(key))
    copied = [bound.source_model._meta.get_field(name) for name in bound.decl.copy_on_repair]
    columns = [f.source for f in bound.fields] + copied
    row = next(table.select(columns, where, params), None)
    if row is None:
        return None
    targets = [f.target.attname for f in bound.fields] + list(bound.decl.copy_on_repair)
    return dict(zip(targets, row, strict=True))


def apply_row(decl: RowParity, action: Action) -> str:
    bound = bind_row_parity(decl)
    model: type[models.Model] = bound.target_model
    table = Table(model, bound.target_alias)
    _, target = make_sides(bound)
    key_values = target.parse_key(action.key)
    where, params = table.where_equal(bound.target_key, key_values)
    filters = {f.attname: v for f, v in zip(bound.target_key, key_values, strict=True)}
    if action.action == "delete":
        origin = model._default_manager.using(bound.target_alias).filter(**filters)
        return f"deleted {table.delete(where, params, origin)}"
    values = _source_values(bound, action.key)
    if values is None:
        return "source row is gone; nothing to copy"
    if action.action == "insert" and not table.exists(where, params):
        row = model(**filters, **values)
        if saves_plainly(model):
            table.insert(row)
        else:  # an overridden save() or parent tables: the model's own code, and the ORM's quoting
            row.save(using=bound.target_alias, force_insert=True)
        return "inserted"
    fields = {model._meta.get_field(name): value for name, value in values.items()}
    return f"updated {table.update(fields, where, params)}"  # type: ignore[arg-type]


def _child_row(decl: ReferenceParity, action: Action) -> tuple[Table, models.Field, str, list[Any]]:
    """The child's table, the reference's field, and the WHERE clause selecting the action's row."""
    child = decl.child.resolve_model(decl.name)
    table = Table(child, action.alias)
    where, params = table.where_equal([child._meta.pk], [child._meta.pk.to_python(action.key)])
    return table, child._meta.get_field(decl.field), where, params  # type: ignore[return-value]


def apply_reference(decl: ReferenceParity, action: Action) -> str:
    table, fk, where, params = _child_row(decl, action)
    if action.action == "delete":
        model = table.model
        origin = model._default_manager.using(action.alias).filter(pk=model._meta.pk.to_python(action.key))
        return f"deleted {table.delete(where, params, origin)}"
    return f"detached {table.update({fk: None}, where, params)}"


def verify_row(decl: RowParity, action: Action) -> bool:
    source, target = make_sides(bind_row_parity(decl))
    a = source.rows_by_keys([action.key]).get(action.key)
    b = target.rows_by_keys([action.key]).get(action.key)
    return (a is None and b is None) or (a is not None and b is not None and a.fp == b.fp)


def verify_reference(decl: ReferenceParity, action: Action) -> bool:
    table, fk, where, params = _child_row(decl, action)
    if action.action == "delete":
        return not table.exists(where, params)
    return not table.exists(f"{where} AND {table.col(fk)} IS NOT NULL", params)


def execute(
    decl: Declaration,
    actions: Sequence[Action],
    *,
    user: Any = None,
    performed_as: str = "",
    on_record: Callable[[list[RepairLog]], None] | None = None,
) -> list[RepairLog]:
    """Apply ``actions`` (in one transaction per database alias), re-verify each key, then record.

    Safe to run again after a crash at any point (a redelivered task does): the actions are
    idempotent, and the record (drift status, one ``RepairLog`` per action, and whatever
    ``on_record`` writes) is one transaction, so it is written whole after the apply has
    committed, or not at all and the drift stays active for the rerun to apply and record.
    """
    if not actions:
        return []
    results: list[tuple[Action, str]] = []
    aliases = {decl.transaction_alias(a) for a in actions}
    with ExitStack() as stack:
        for alias in sorted(a for a in aliases if a is not None):
            stack.enter_context(transaction.atomic(using=alias))
        for action in actions:
            results.append((action, decl.apply_repair(action)))
    checked: list[tuple[Action, str, bool]] = []
    for action, outcome in results:
        try:
            verified = decl.verify_repair(action)
        except Exception as exc:  # applied and committed: say so, and that the re-check failed
            verified = False
            outcome += "; re-check failed: " + mask_urls(f"{type(exc).__name__}: {exc}")
        checked.append((action, outcome, verified))
    try:
        return _record(decl, checked, user, performed_as, on_record)
    except Exception as exc:
        raise RepairNotRecorded(decl.name, len(checked)) from exc


class RepairNotRecorded(Exception):
    """The repair was applied and committed, but recording it failed: its drift stays active, and
    a rerun (idempotent) applies nothing new and records it."""

    def __init__(self, check: str, actions: int) -> None:
        super().__init__(f"{check}: {actions} action(s) applied, but the record of them failed")


def _record(
    decl: Declaration,
    checked: Sequence[tuple[Action, str, bool]],
    user: Any,
    performed_as: str,
    on_record: Callable[[list[RepairLog]], None] | None,
) -> list[RepairLog]:
    now = timezone.now()
    keys = {(action.kind, action.key) for action, _, _ in checked}
    with transaction.atomic(using=router.db_for_write(RepairLog)):
        drifts = {
            (d.kind, d.key): d
            for d in Drift.objects.select_for_update()
            .filter(check_name=decl.name, key__in={key for _, key in keys})
            .order_by("pk")
            if (d.kind, d.key) in keys
        }
        repaired = [drifts[(a.kind, a.key)].pk for a, _, ok in checked if ok and (a.kind, a.key) in drifts]
        Drift.objects.filter(pk__in=repaired).update(status=Drift.Status.REPAIRED, resolved_at=now)
        logs = RepairLog.objects.bulk_create(
            RepairLog(
                drift=drifts.get((action.kind, action.key)),
                check_name=decl.name,
                key=action.key,
                action=action.action,
                plan={"table": action.table, "alias": action.alias, "changes": action.changes},
                executed=True,
                verified=verified,
                result=outcome,
                performed_by=user if getattr(user, "pk", None) else None,
                performed_as=performed_as,
            )
            for action, outcome, verified in checked
        )
        if on_record is not None:
            on_record(logs)
    return logs
