"""The shipped declarations for the mirrored schemas, on a seeded data set with planted drift."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from consistency.auth_service.models import AuthSession, AuthUser
from consistency.backend.models import Analysis, CorpusAuditLog, Message, Secret, Thread, ToolUsageLog, User
from consistency.engine.registry import registry

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "auth"])

SHIPPED = {
    "users",
    "auth_sessions_user",
    "password_reset_tokens_user",
    "secrets_user",
    "threads_user",
    "tool_usage_logs_user",
    "analyses_user",
    "corpus_audit_logs_user",
    "messages_thread",
    "threads_metadata_user",
    "auth_users_email_unique_ci",
    "users_email_unique_ci",
    "auth_users_placeholder_email",
    "users_placeholder_email",
}


def audit() -> tuple[int, dict[str, Any]]:
    out = StringIO()
    code = 0
    try:
        # The SQL checks only: the seed here skips the cache, analytics and vectors.
        sql_checks = sorted(d.name for d in registry if d.store == "sql")
        call_command(
            "checkconsistency",
            *sql_checks,
            "--format",
            "json",
            "--settle",
            "0",
            stdout=out,
            stderr=StringIO(),
        )
    except CommandError as exc:
        code = exc.returncode
    report = json.loads(out.getvalue())
    return code, {c["name"]: c for c in report["checks"]}


@pytest.fixture
def seeded() -> None:
    call_command(
        "seed",
        users=25,
        seed=11,
        flush=True,
        skip_cache=True,
        skip_analytics=True,
        skip_vectors=True,
        stdout=StringIO(),
        stderr=StringIO(),
    )


def test_shipped_declarations__are_all_registered() -> None:
    assert {d.name for d in registry if d.store == "sql"} >= SHIPPED


def test_shipped_declarations__a_seeded_data_set_has_no_drift(seeded: None) -> None:
    code, checks = audit()
    assert code == 0
    assert {name: c["drift_count"] for name, c in checks.items() if name in SHIPPED} == dict.fromkeys(
        SHIPPED, 0
    )
    assert checks["users"]["compared"] == 25


def test_shipped_declarations__find_each_planted_drift(seeded: None) -> None:
    users = list(AuthUser.objects.using("auth").order_by("id"))
    gone, renamed, deactivated = users[0], users[1], users[2]
    # users: a backend user missing, one renamed, one deactivated, one extra. The missing
    # user's backend rows become orphans too: true findings the audit must also report.
    dependents: dict[str, set[tuple[str, str]]] = {}
    for name, model in (
        ("secrets_user", Secret),
        ("threads_user", Thread),
        ("tool_usage_logs_user", ToolUsageLog),
        ("analyses_user", Analysis),
        ("corpus_audit_logs_user", CorpusAuditLog),
    ):
        keys = {
            ("orphan", str(pk)) for pk in model.objects.filter(user_id=gone.id).values_list("pk", flat=True)
        }
        if keys:
            dependents[name] = keys
    User.objects.filter(id=gone.id).delete()
    User.objects.filter(id=renamed.id).update(full_name="Someone Else")
    User.objects.filter(id=deactivated.id).update(is_active=False)
    User.objects.create(id="ghost-user", email="ghost@corp.io", full_name="Ghost")
    # orphans: a session and a secret whose users are gone, a message whose thread is gone.
    session = AuthSession.objects.using("auth").filter(user_id=users[3].id).first()
    assert session is not None
    AuthSession.objects.using("auth").filter(pk=session.pk).update(user_id="no-such-auth-user")
    secret = Secret.objects.exclude(user_id=gone.id).first()
    assert secret is not None
    Secret.objects.filter(pk=secret.pk).update(user_id="no-such-user")
    message = Message.objects.exclude(thread__user_id=gone.id).first()
    assert message is not None
    Message.objects.filter(pk=message.pk).update(thread_id="thread_gone")
    # invariants: a thread owned by one user but labelled with another, a duplicate email, a placeholder.
    thread = Thread.objects.exclude(user_id__in=[users[4].id, gone.id]).first()
    assert thread is not None
    Thread.objects.filter(pk=thread.pk).update(metadata={"user_id": users[4].id})
    AuthUser.objects.using("auth").filter(id=users[5].id).update(email=users[6].email.upper())
    AuthUser.objects.using("auth").filter(id=users[7].id).update(email="placeholder@corp.io")

    code, checks = audit()

    assert code == 1
    found = {
        name: {(d["kind"], d["key"]) for d in c["drifts"]} for name, c in checks.items() if c["drift_count"]
    }
    expected = {
        "users": {
            ("missing", gone.id),
            ("mismatch", renamed.id),
            ("mismatch", deactivated.id),
            ("extra", "ghost-user"),
            # users[5] and users[7] now have another email in auth than in backend
            ("mismatch", users[5].id),
            ("mismatch", users[7].id),
        },
        "auth_sessions_user": {("orphan", session.pk)},
        "secrets_user": {("orphan", str(secret.pk))},
        "messages_thread": {("orphan", message.pk)},
        "threads_metadata_user": {("invariant", thread.pk)},
        "auth_users_email_unique_ci": {("invariant", users[6].email.lower())},
        "auth_users_placeholder_email": {("invariant", users[7].id)},
    }
    for name, keys in dependents.items():
        expected[name] = expected.get(name, set()) | keys
    assert found == expected
    mismatches = {d["key"]: d["fields"] for d in checks["users"]["drifts"] if d["kind"] == "mismatch"}
    assert mismatches[renamed.id] == ["full_name"]
    assert mismatches[deactivated.id] == ["is_active"]


def test_shipped_declarations__repair_brings_users_back_into_parity(seeded: None) -> None:
    victim = AuthUser.objects.using("auth").order_by("id").first()
    assert victim is not None
    User.objects.filter(id=victim.id).delete()
    User.objects.create(id="ghost-user", email="ghost@corp.io", full_name="Ghost")
    with pytest.raises(CommandError):
        call_command("checkconsistency", "users", "--repair", "--execute", "--settle", "0", stdout=StringIO())
    restored = User.objects.get(id=victim.id)
    assert (restored.email, restored.full_name, restored.hashed_password) == (
        victim.email,
        victim.full_name,
        victim.hashed_password,
    )
    assert not User.objects.filter(id="ghost-user").exists()
    call_command("checkconsistency", "users", "--settle", "0", stdout=StringIO())  # exit 0: no exception


def test_django_check__clean_on_the_real_stores() -> None:
    # A deployed setup has run initstores; without it W006/W007 say to (tests/test_checks.py).
    call_command("initstores", stdout=StringIO())
    out, err = StringIO(), StringIO()
    call_command("check", databases=["default", "auth"], stdout=out, stderr=err)
    assert err.getvalue() == ""
    assert "System check identified no issues" in out.getvalue()
