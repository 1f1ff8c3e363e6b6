"""Secrets never leave the engine: plant secret values in every store, make them drift, run
every output (text, JSON, JUnit, repair plans, drift records, repair logs, run errors, logs,
the admin) and search all of it for the planted values."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.db import connections
from django.test import Client, override_settings

from consistency.auth_service.models import AuthSession, AuthUser, PasswordResetToken
from consistency.backend.models import Secret, User
from consistency.models import AuditRun, CheckRun, Drift, RepairLog
from consistency.stores.analytics import close_analytics
from tests.reliability.conftest import command, reliability_db

pytestmark = reliability_db
ROOT = Path(__file__).resolve().parents[2]

SECRETS = {
    "hashed_password": "$2b$12$PLANTEDhashPLANTEDhashPLANTEDhashPLANTEDhashPLANTEDha",
    "changed_password": "$2b$12$OTHERhashOTHERhashOTHERhashOTHERhashOTHERhashOTHERhashO",
    "refresh_token_hash": "rth-PLANTED-5f0c1d2e3a4b",
    "token_hash": "reset-PLANTED-9a8b7c6d5e",
    "encrypted_value": "gAAAAA-PLANTED-fernet-ciphertext",
    "provider_data": "ya29.PLANTED-oauth-access-token",
    "url_password": "PLANTEDurlPW",
    "cached_hash": "$2b$12$CACHEDhashCACHEDhashCACHEDhashCACHEDhashCACHEDhashCACH",
}
CHECKS = ("users", "auth_sessions_user", "password_reset_tokens_user", "secrets_user", "cache_auth_users")


def without_fk_checks(alias: str, sql: str, params: list[Any]) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        cursor.execute(sql, params)
        cursor.execute("SET session_replication_role = DEFAULT")


def plant(users: int) -> None:
    auth_users = list(AuthUser.objects.order_by("pk")[:6])
    a, b, c, d, e, f = auth_users
    # `users`: a is missing from the backend (the repair copies its hash); b's hash differs
    # (never compared, never shown); c's name carries a URL with a password.
    AuthUser.objects.filter(pk=a.pk).update(hashed_password=SECRETS["hashed_password"])
    without_fk_checks("default", "DELETE FROM users WHERE id = %s", [a.pk])
    User.objects.filter(pk=b.pk).update(hashed_password=SECRETS["changed_password"], full_name="Changed Name")
    url = f"https://bob:{SECRETS['url_password']}@files.example.org/x"
    AuthUser.objects.filter(pk=c.pk).update(
        full_name=url[:80], provider_data={"access_token": SECRETS["provider_data"], "link": url}
    )
    # Orphans carrying secrets: a session, a reset token and a stored secret of gone users.
    session = AuthSession.objects.filter(user_id=d.pk).first() or AuthSession.objects.first()
    assert session is not None
    AuthSession.objects.filter(pk=session.pk).update(refresh_token_hash=SECRETS["refresh_token_hash"])
    without_fk_checks("auth", "UPDATE auth_sessions SET user_id = %s WHERE id = %s", [e.pk + "x", session.pk])
    PasswordResetToken.objects.using("auth").create(
        id="00000000-0000-4000-8000-00000000beef",
        user_id=e.pk,
        token_hash=SECRETS["token_hash"],
        expires_at=session.expires_at,
    )
    without_fk_checks(
        "auth",
        "UPDATE password_reset_tokens SET user_id = 'gone' WHERE token_hash = %s",
        [SECRETS["token_hash"]],
    )
    Secret.objects.create(user_id=f.pk, key="api", encrypted_value=SECRETS["encrypted_value"])
    without_fk_checks("default", "UPDATE secrets SET user_id = 'gone' WHERE key = 'api'", [])
    # The cache: an entry that carries a secret field it must never hold.
    cache: Any = caches["default"]
    entry = {"id": str(e.pk), "email": e.email, "hashed_password": SECRETS["cached_hash"]}
    cache.client.get_client(write=True).set(cache.make_key(f"auth:user:{e.pk}"), json.dumps(entry), ex=600)


def find_planted(text: str) -> list[str]:
    return [name for name, value in SECRETS.items() if value in text]


def test_planted_secrets_appear_in_no_output(seeded: int, caplog: pytest.LogCaptureFixture) -> None:
    plant(seeded)
    caplog.set_level(logging.DEBUG)
    outputs: dict[str, str] = {}
    for fmt in ("text", "json", "junit"):
        code, out, message = command(*CHECKS, "--format", fmt)
        assert code == 1, message
        outputs[fmt], outputs[f"{fmt} error"] = out, message
    report = json.loads(outputs["json"])
    found = {c["name"]: {d["kind"] for d in c["drifts"]} for c in report["checks"]}
    # Every planted drift is there (so the search below searched real findings).
    assert found["users"] >= {"missing", "mismatch"}
    for name in ("auth_sessions_user", "password_reset_tokens_user", "secrets_user"):
        assert found[name] == {"orphan"}, (name, found)
    assert found["cache_auth_users"], found

    code, out, message = command(*CHECKS, "--repair")
    outputs["repair plan"] = out + message
    code, out, message = command(*CHECKS, "--repair", "--execute")
    outputs["repair"] = out + message
    assert "repaired and re-verified" in out, message
    # The repair did copy the hash it never showed.
    a_pk = AuthUser.objects.get(hashed_password=SECRETS["hashed_password"]).pk
    assert User.objects.get(pk=a_pk).hashed_password == SECRETS["hashed_password"]

    outputs["drift records"] = json.dumps(list(Drift.objects.values()), default=str)
    outputs["repair logs"] = json.dumps(list(RepairLog.objects.values()), default=str)
    outputs["check runs"] = json.dumps(list(CheckRun.objects.values()), default=str)
    outputs["audit runs"] = json.dumps(list(AuditRun.objects.values()), default=str)
    outputs["logs"] = caplog.text
    outputs.update(admin_pages())
    assert len(outputs["drift records"]) > 1000

    leaks = {where: find_planted(text) for where, text in outputs.items() if find_planted(text)}
    assert leaks == {}


def admin_pages() -> dict[str, str]:
    """Every admin page about drift, runs and repairs that this tree registers, as a superuser."""
    User_ = get_user_model()
    staff = User_.objects.create_superuser("h8-admin", "admin@example.org", "x-not-a-secret-x")
    client = Client()
    client.force_login(staff)
    pages: dict[str, str] = {}
    for model in (Drift, AuditRun, CheckRun, RepairLog):
        if not admin.site.is_registered(model):
            continue
        base = f"/admin/consistency/{model._meta.model_name}/"
        pages[base] = client.get(base).content.decode()
        for pk in model.objects.values_list("pk", flat=True)[:50]:
            response = client.get(f"{base}{pk}/change/")
            pages[f"{base}{pk}"] = response.content.decode()
    return pages


def test_store_error_with_credentials_in_the_url_is_masked(
    seeded: int, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"clickhouse://default:{SECRETS['url_password']}@127.0.0.1:1/h8_nowhere?connect_timeout=1"
    close_analytics()
    with override_settings(CLICKHOUSE_URL=url):
        code, out, message = command("analytics_message_events", "--format", "json")
        close_analytics()
    assert code == 2
    assert "clickhouse" in message
    error = json.loads(out)["checks"][0]["error"]
    assert "default:***@127.0.0.1:1" in error
    texts = [out, message, caplog.text, json.dumps(list(CheckRun.objects.values("error")))]
    assert not [t for t in texts if SECRETS["url_password"] in t]


def test_bad_database_url_at_startup_never_prints_its_password() -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DATABASE_URL": f"postgres://u:{SECRETS['url_password']}@h:notaport/db",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "checkconsistency", "--list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "DATABASE_URL=" in result.stderr
    assert SECRETS["url_password"] not in result.stderr + result.stdout
