"""Review actions on drift records: acknowledge, mute, re-verify, repair, and audit now.

Each function takes the acting user and writes the trail: a ``RepairLog`` row per
drift (who, when, what, result) and, for the admin's requests, Django's
``LogEntry`` (``log``). Permissions are the caller's to check (the admin does,
on the server, before calling).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.utils import timezone

from consistency.engine import repair as engine_repair
from consistency.engine.declarations import Declaration, ReferenceParity
from consistency.engine.findings import Action, Finding
from consistency.engine.redact import mask_urls
from consistency.engine.registry import registry
from consistency.engine.runner import AuditOptions, run_audit
from consistency.models import AuditRun, Drift, RepairLog
from consistency.sync import alerts
from consistency.sync.locks import cache_lock

#: Drift a reviewer can still act on; repaired and resolved drift is history.
ACTIVE = (Drift.Status.OPEN, Drift.Status.ACKNOWLEDGED, Drift.Status.MUTED)


class ReviewError(ValueError):
    """Bad input for a review action; the message names what is wrong."""


def finding_of(drift: Drift) -> Finding:
    """The engine's view of a stored drift record."""
    return Finding(
        check=drift.check_name,
        kind=drift.kind,
        key=drift.key,
        fields=tuple(drift.fields or ()),
        source=drift.source,
        target=drift.target,
        detail=drift.detail,
    )


def _user(user_id: int | None) -> Any:
    if user_id is None:
        return None
    return get_user_model()._default_manager.filter(pk=user_id).first()


def log(user: Any, drifts: Sequence[Drift], message: str) -> None:
    """One LogEntry per drift (a single INSERT), for the admin's history and audit trail."""
    if drifts and getattr(user, "pk", None):
        LogEntry.objects.log_actions(user.pk, list(drifts), CHANGE, change_message=message)


def _trail(drifts: Iterable[Drift], user: Any, action: str, result: str, **extra: Any) -> None:
    RepairLog.objects.bulk_create(
        RepairLog(
            drift=d,
            check_name=d.check_name,
            key=d.key,
            action=action,
            result=result,
            performed_by=user if getattr(user, "pk", None) else None,
            **extra,
        )
        for d in drifts
    )


def acknowledge(drifts: QuerySet[Drift], user: Any) -> list[Drift]:
    """Mark active drift acknowledged (seen, being handled); returns the drifts changed."""
    chosen = list(drifts.filter(status__in=ACTIVE).exclude(status=Drift.Status.ACKNOWLEDGED))
    Drift.objects.filter(pk__in=[d.pk for d in chosen]).update(
        status=Drift.Status.ACKNOWLEDGED, muted_until=None
    )
    _trail(chosen, user, "acknowledge", "acknowledged")
    log(user, chosen, "Acknowledged")
    return chosen


def mute(drifts: QuerySet[Drift], user: Any, until: dt.datetime, reason: str) -> list[Drift]:
    """Mute active drift until ``until`` (the next audit after that reopens it), with a reason."""
    reason = reason.strip()
    if not reason:
        raise ReviewError("a reason is required to mute drift")
    if until <= timezone.now():
        raise ReviewError(f"mute until {until.isoformat()} is not in the future")
    chosen = list(drifts.filter(status__in=ACTIVE))
    Drift.objects.filter(pk__in=[d.pk for d in chosen]).update(
        status=Drift.Status.MUTED, muted_until=until, note=reason
    )
    message = f"Muted until {until:%Y-%m-%d %H:%M} UTC: {reason}"
    _trail(chosen, user, "mute", message)
    log(user, chosen, message)
    return chosen


def _reference_gone(decl: ReferenceParity, drift: Drift) -> bool:
    """An orphan is gone when its child row is gone, detached, or its parent exists again."""
    child = decl.child.resolve_model(decl.name)
    child_alias = decl.child.resolve_alias(decl.name, child)
    parent = decl.parent.resolve_model(decl.name)
    parent_alias = decl.parent.resolve_alias(decl.name, parent)
    attname = child._meta.get_field(decl.field).attname  # type: ignore[union-attr]
    ref = (
        child._default_manager.using(child_alias)
        .filter(pk=child._meta.pk.to_python(drift.key))
        .values_list(attname, flat=True)
        .first()
    )
    if ref is None:
        return True
    parent_key = parent._meta.pk.name if decl.parent_key == "pk" else decl.parent_key
    return parent._default_manager.using(parent_alias).filter(**{parent_key: ref}).exists()


def still_there(decl: Declaration, drift: Drift) -> bool | None:
    """Re-read the stores for one drift: True if it is still there, None if it needs a full check."""
    if isinstance(decl, ReferenceParity):
        return not _reference_gone(decl, drift)
    actions: list[Action] = decl.plan_repair([finding_of(drift)])
    if not actions:
        return None  # no per-key probe for this kind (invariants, aggregates, schema)
    return not all(decl.verify_repair(a) for a in actions)


@dataclass
class ReverifyResult:
    drift_id: int
    status: str
    result: str


def reverify(drift_id: int, user_id: int | None = None) -> ReverifyResult:
    """Check one drift again now; resolve it if the stores agree. Written to the repair log."""
    drift = Drift.objects.get(pk=drift_id)
    user = _user(user_id)
    decl = registry.get(drift.check_name)
    try:
        present = still_there(decl, drift)
        if present is None:
            run, _ = run_audit([decl], AuditOptions(trigger=AuditRun.Trigger.ADMIN))
            drift.refresh_from_db()
            gone = drift.status in (Drift.Status.RESOLVED, Drift.Status.REPAIRED)
            result = f"re-ran check {decl.name} (run {run.pk}, {run.get_status_display()}): " + (
                "drift gone" if gone else "still there"
            )
            if run.status == AuditRun.Status.ERROR:
                gone, result = False, f"check {decl.name} failed: {run.error}"
        else:
            gone = not present
            result = "drift gone" if gone else "still there"
            if gone and drift.status in ACTIVE:
                drift.status, drift.resolved_at = Drift.Status.RESOLVED, timezone.now()
                drift.save(update_fields=["status", "resolved_at"])
    except Exception as exc:
        gone, result = False, "failed: " + mask_urls(f"{type(exc).__name__}: {exc}")
    _trail([drift], user, "reverify", result, verified=gone)
    log(user, [drift], f"Re-verified: {result}")
    return ReverifyResult(drift.pk, drift.status, result)


@dataclass
class PlannedRepair:
    """The repair of the drift of one check: what will change in which store."""

    check: str
    drifts: list[Drift]
    actions: list[Action] = field(default_factory=list)
    problem: str = ""  # why nothing can be planned


def plan(drifts: Iterable[Drift]) -> list[PlannedRepair]:
    """Plan the repair of active ``drifts``, one group per check, without changing anything."""
    by_check: dict[str, list[Drift]] = defaultdict(list)
    for drift in drifts:
        if drift.status in ACTIVE:
            by_check[drift.check_name].append(drift)
    plans = []
    for check, group in sorted(by_check.items()):
        if check not in registry:
            plans.append(PlannedRepair(check, group, problem=f"check {check!r} is not registered"))
            continue
        decl = registry.get(check)
        try:
            actions = engine_repair.plan(decl, [finding_of(d) for d in group])
        except Exception as exc:
            plans.append(PlannedRepair(check, group, problem=mask_urls(f"{type(exc).__name__}: {exc}")))
            continue
        problem = "" if actions else f"check {check} declares no repair for this drift"
        plans.append(PlannedRepair(check, group, actions, problem))
    return plans


def repair(drift_ids: Sequence[int], user_id: int | None = None) -> list[RepairLog]:
    """Plan and apply the repair of ``drift_ids`` (run by the Celery task); every outcome is logged.

    Safe to run again with the same ids (a redelivered task does): only drift still active is
    planned, and ``engine_repair.execute`` applies idempotently and records whole or not at all.
    """
    user = _user(user_id)
    logs: list[RepairLog] = []
    for planned in plan(Drift.objects.filter(pk__in=list(drift_ids)).order_by("pk")):
        if not planned.actions:
            _trail(planned.drifts, user, "repair", f"not repaired: {planned.problem}", verified=False)
            log(user, planned.drifts, f"Repair not possible: {planned.problem}")
            continue
        drifts = {drift.pk: drift for drift in planned.drifts}

        def log_repaired(done: list[RepairLog], drifts: dict[int, Drift] = drifts) -> None:
            # In the transaction that records the repair: both written, or neither.
            for entry in done:
                if entry.drift_id in drifts:
                    outcome = "verified" if entry.verified else "NOT verified"
                    log(
                        user,
                        [drifts[entry.drift_id]],
                        f"Repaired ({entry.action}: {entry.result}; {outcome})",
                    )

        try:
            done = engine_repair.execute(
                registry.get(planned.check), planned.actions, user=user, on_record=log_repaired
            )
        except Exception as exc:
            if isinstance(exc, engine_repair.RepairNotRecorded):
                cause = exc.__cause__ or exc
                message = "applied, but not recorded (repair again to record it): "
            else:
                cause, message = exc, "failed, nothing changed: "
            message += mask_urls(f"{type(cause).__name__}: {cause}")
            _trail(planned.drifts, user, "repair", message, verified=False)
            log(user, planned.drifts, f"Repair {message}")
            continue
        logs.extend(done)
    return logs


def audit_now(checks: Sequence[str], user_id: int | None = None) -> dict[str, Any]:
    """Run a full audit of ``checks`` (all when empty) started from the admin; locked checks skip."""
    declarations = registry.select(checks)
    with ExitStack() as stack:
        chosen = [d for d in declarations if stack.enter_context(cache_lock(d.name))]
        skipped = [d.name for d in declarations if d not in chosen]
        if not chosen:
            return {"status": "skipped: locked", "run": None, "skipped": skipped}
        run, _ = run_audit(chosen, AuditOptions(trigger=AuditRun.Trigger.ADMIN))
    alerts.notify_new_drift(run)
    user = _user(user_id)
    if user is not None:
        LogEntry.objects.log_actions(user.pk, [run], CHANGE, change_message="Started from the admin")
    return {"status": run.status, "run": run.pk, "skipped": skipped}
