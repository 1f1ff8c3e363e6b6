"""The review permissions, checked on the server for every view and action."""

from __future__ import annotations

from django.http import HttpRequest

REVIEW = "consistency.review_drift"
REPAIR = "consistency.repair_drift"
RUN_AUDIT = "consistency.run_audit"

#: Most drifts one request may act on: filter first, or use ``checkconsistency --repair``.
MAX_SELECTED = 1000


def can_review(request: HttpRequest) -> bool:
    return request.user.has_perm(REVIEW)


def can_repair(request: HttpRequest) -> bool:
    return request.user.has_perm(REPAIR)


def can_run_audit(request: HttpRequest) -> bool:
    return request.user.has_perm(RUN_AUDIT)
