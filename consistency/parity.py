"""Parity declarations for the mirrored auth and backend schemas.

Any installed app can ship a ``parity.py`` like this one; the registry
discovers it the way the admin discovers ``admin.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db.models import Count, F, QuerySet
from django.db.models.fields.json import KT
from django.db.models.functions import Lower

from consistency.conf import app_settings
from consistency.engine.declarations import Invariant, ReferenceParity, Repair, RowParity, Severity, Side
from consistency.engine.normalizers import Email
from consistency.engine.registry import register

AUTH_USER = Side("auth_service.AuthUser")
BACKEND_USER = Side("backend.User")

register(
    RowParity(
        name="users",
        description="Every auth user has a backend user with the same id, email, name and active flag.",
        source=AUTH_USER,
        target=BACKEND_USER,
        key=("id",),
        fields=("email", "full_name", "is_active"),
        normalizers={"email": Email()},
        copy_on_repair=("hashed_password",),
        updated_at=("updated_at", "updated_at"),
        repair=Repair.SOURCE_WINS,
        severity=Severity.CRITICAL,
        tags=("users", "sync"),
    ),
    ReferenceParity(
        name="auth_sessions_user",
        description="Auth sessions whose user is gone.",
        child=Side("auth_service.AuthSession"),
        field="user",
        parent=AUTH_USER,
        repair=Repair.DELETE_ORPHAN,
        tags=("orphans", "auth"),
    ),
    ReferenceParity(
        name="password_reset_tokens_user",
        description="Password reset tokens whose user is gone.",
        child=Side("auth_service.PasswordResetToken"),
        field="user",
        parent=AUTH_USER,
        repair=Repair.DELETE_ORPHAN,
        tags=("orphans", "auth"),
    ),
)


def _orphans_of_backend_user(model: str, name: str, repair: Repair, severity: Severity) -> ReferenceParity:
    return ReferenceParity(
        name=name,
        description=f"{model} rows whose backend user is gone.",
        child=Side(model),
        field="user",
        parent=BACKEND_USER,
        repair=repair,
        severity=severity,
        tags=("orphans", "backend"),
    )


register(
    _orphans_of_backend_user("backend.Secret", "secrets_user", Repair.DELETE_ORPHAN, Severity.CRITICAL),
    _orphans_of_backend_user("backend.Thread", "threads_user", Repair.DELETE_ORPHAN, Severity.ERROR),
    _orphans_of_backend_user("backend.ToolUsageLog", "tool_usage_logs_user", Repair.NONE, Severity.WARNING),
    _orphans_of_backend_user("backend.Analysis", "analyses_user", Repair.DELETE_ORPHAN, Severity.ERROR),
    _orphans_of_backend_user(
        "backend.CorpusAuditLog", "corpus_audit_logs_user", Repair.DETACH_ORPHAN, Severity.WARNING
    ),
    ReferenceParity(
        name="messages_thread",
        description="Messages whose thread is gone.",
        child=Side("backend.Message"),
        field="thread",
        parent=Side("backend.Thread"),
        repair=Repair.DELETE_ORPHAN,
        tags=("orphans", "backend"),
    ),
)


def thread_owner_disagrees(threads: QuerySet) -> Iterator[dict[str, Any]]:
    """Threads whose ``metadata_["user_id"]`` names another user than ``user_id``."""
    rows = (
        threads.annotate(metadata_user=KT("metadata__user_id"))
        .filter(metadata_user__isnull=False)
        .exclude(metadata_user=F("user_id"))
        .values("id", "user_id", "metadata_user")
    )
    for row in rows.iterator(chunk_size=2000):
        yield {
            "key": row["id"],
            "user_id": row["user_id"],
            "metadata_user_id": row["metadata_user"],
            "detail": f"user_id={row['user_id']!r} but metadata_.user_id={row['metadata_user']!r}",
        }


def duplicate_emails(users: QuerySet) -> Iterator[dict[str, Any]]:
    """Groups of users sharing one email, ignoring case."""
    lowered = users.annotate(email_ci=Lower("email"))
    groups = lowered.values("email_ci").annotate(n=Count("pk")).filter(n__gt=1).order_by("email_ci")
    for group in groups.iterator(chunk_size=2000):
        ids = sorted(
            str(pk) for pk in lowered.filter(email_ci=group["email_ci"]).values_list("pk", flat=True)
        )
        yield {"key": group["email_ci"], "ids": ids, "detail": f"{group['n']} users share this email: {ids}"}


def placeholder_emails(users: QuerySet) -> Iterator[dict[str, Any]]:
    """Users whose email matches a placeholder pattern (CONSISTENCY["PLACEHOLDER_EMAIL_PATTERNS"])."""
    pattern = "|".join(f"({p})" for p in app_settings.PLACEHOLDER_EMAIL_PATTERNS)
    for row in users.filter(email__iregex=pattern).values("pk", "email").iterator(chunk_size=2000):
        yield {"key": row["pk"], "email": row["email"], "detail": f"placeholder email {row['email']!r}"}


register(
    Invariant(
        name="threads_metadata_user",
        description="A thread's metadata_ user is its user.",
        side=Side("backend.Thread"),
        violations=thread_owner_disagrees,
        fields=("user", "metadata"),
        tags=("invariants", "backend"),
    ),
    Invariant(
        name="auth_users_email_unique_ci",
        description="One auth user per email, ignoring case.",
        side=AUTH_USER,
        violations=duplicate_emails,
        fields=("email",),
        tags=("invariants", "auth", "users"),
    ),
    Invariant(
        name="users_email_unique_ci",
        description="One backend user per email, ignoring case.",
        side=BACKEND_USER,
        violations=duplicate_emails,
        fields=("email",),
        tags=("invariants", "backend", "users"),
    ),
    Invariant(
        name="auth_users_placeholder_email",
        description="Auth users with a placeholder email.",
        side=AUTH_USER,
        violations=placeholder_emails,
        fields=("email",),
        severity=Severity.WARNING,
        tags=("invariants", "auth", "users"),
    ),
    Invariant(
        name="users_placeholder_email",
        description="Backend users with a placeholder email.",
        side=BACKEND_USER,
        violations=placeholder_emails,
        fields=("email",),
        severity=Severity.WARNING,
        tags=("invariants", "backend", "users"),
    ),
)

from consistency.parity_stores import *  # noqa: E402, F403
