"""The auth service's tables, mirrored with their real names on the ``auth`` alias.

References the auth database does not enforce (a session's user, an audit
log's user) are declared with ``db_constraint=False``: the ORM knows the
relation and the audit can look for its orphans, while the schema stays the
real one.
"""

from __future__ import annotations

from typing import Any

from django.db import models, router, transaction
from django.utils import timezone


class AuthProvider(models.TextChoices):
    LOCAL = "local", "Local password"
    GOOGLE = "google", "Google"
    GITHUB = "github", "GitHub"
    MICROSOFT = "microsoft", "Microsoft"


class AuthUser(models.Model):
    """An account as the auth service knows it; the backend's ``users.id`` equals ``id``."""

    id = models.CharField(primary_key=True, max_length=64)
    email = models.CharField(max_length=255, unique=True)
    full_name = models.CharField(max_length=255, blank=True, default="")
    hashed_password = models.CharField(max_length=255, null=True, blank=True)
    auth_provider = models.CharField(max_length=32, choices=AuthProvider.choices, default=AuthProvider.LOCAL)
    provider_user_id = models.CharField(max_length=255, null=True, blank=True)
    provider_data = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=True)
    is_verified = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_login_at = models.DateTimeField(null=True, blank=True)
    failed_login_attempts = models.IntegerField(default=0)
    locked_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "auth_users"
        verbose_name = "auth user"
        indexes = [models.Index(fields=["auth_provider", "provider_user_id"], name="auth_users_provider_idx")]

    def __str__(self) -> str:
        return self.email

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save in a transaction, so the outbox row written by post_save commits with the change."""
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using):
            super().save(*args, **kwargs)


class AuthSession(models.Model):
    """A refresh-token session; ``user_id`` has no database constraint in the real schema."""

    id = models.CharField(primary_key=True, max_length=64)
    user = models.ForeignKey(
        AuthUser, on_delete=models.DO_NOTHING, db_constraint=False, related_name="sessions"
    )
    refresh_token_hash = models.CharField(max_length=255)
    ip_address = models.CharField(max_length=45, null=True, blank=True)
    user_agent = models.TextField(null=True, blank=True)
    device_id = models.CharField(max_length=255, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    last_activity = models.DateTimeField(default=timezone.now, db_index=True)
    is_active = models.BooleanField(default=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "auth_sessions"
        verbose_name = "auth session"
        indexes = [models.Index(fields=["refresh_token_hash"], name="auth_sessions_token_idx")]

    def __str__(self) -> str:
        return self.id


class AuthAuditLog(models.Model):
    """An auth event (login, logout, password change); the user may be gone."""

    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(
        AuthUser,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="audit_logs",
    )
    event_type = models.CharField(max_length=64)
    ip_address = models.CharField(max_length=45, null=True, blank=True)
    user_agent = models.TextField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    success = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        db_table = "auth_audit_logs"
        verbose_name = "auth audit log"

    def __str__(self) -> str:
        return f"{self.event_type} {self.user_id}"


class PasswordResetToken(models.Model):
    """A one-time password reset token, stored only as a hash."""

    id = models.CharField(primary_key=True, max_length=64)
    user = models.ForeignKey(
        AuthUser, on_delete=models.DO_NOTHING, db_constraint=False, related_name="reset_tokens"
    )
    token_hash = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "password_reset_tokens"
        verbose_name = "password reset token"

    def __str__(self) -> str:
        return self.id


class OutboxEvent(models.TextChoices):
    CREATED = "created", "Created"
    UPDATED = "updated", "Updated"
    DEACTIVATED = "deactivated", "Deactivated"
    DELETED = "deleted", "Deleted"


class Outbox(models.Model):
    """A change to an auth user, written in the transaction that made it, relayed to the backend.

    ``payload`` is the user's state after the change (empty for a delete); it holds
    the password hash the backend copies, so it is never logged or shown.
    """

    id = models.BigAutoField(primary_key=True)
    user_id = models.CharField(max_length=64, db_index=True)
    event = models.CharField(max_length=16, choices=OutboxEvent.choices)
    version = models.BigIntegerField()
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.IntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        db_table = "auth_outbox"
        verbose_name = "outbox event"
        constraints = [
            models.UniqueConstraint(fields=["user_id", "version"], name="auth_outbox_user_version")
        ]
        indexes = [
            models.Index(
                fields=["id"], name="auth_outbox_pending_idx", condition=models.Q(processed_at__isnull=True)
            )
        ]

    def __str__(self) -> str:
        return f"{self.event} {self.user_id} v{self.version}"


class OutboxVersion(models.Model):
    """The last outbox version handed out per user; survives the user's deletion."""

    user_id = models.CharField(primary_key=True, max_length=64)
    version = models.BigIntegerField(default=0)

    class Meta:
        db_table = "auth_outbox_versions"

    def __str__(self) -> str:
        return f"{self.user_id} v{self.version}"
