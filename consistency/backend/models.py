"""The backend service's tables, mirrored with their real names on ``default``.

The assistants tables keep the OpenAI-assistants shape (string ids, epoch
``created_at``, a ``metadata_`` JSON column). Two departures from the real
schema make it auditable, and are deliberate:

- ``threads.user_id`` is a real column; the real service hides the owner in
  ``metadata_["user_id"]``, which the audit compares against it.
- Every reference the real database does not enforce is declared with
  ``db_constraint=False``, so the ORM knows it and the audit finds its orphans.
"""

from __future__ import annotations

import time
import uuid

from django.db import models
from django.utils import timezone


def epoch_now() -> int:
    return int(time.time())


class Role(models.TextChoices):
    USER = "user", "User"
    DEVELOPER = "developer", "Developer"
    ADMIN = "admin", "Admin"


class PlanTier(models.TextChoices):
    FREE = "free", "Free"
    PRO = "pro", "Pro"
    TEAM = "team", "Team"
    ENTERPRISE = "enterprise", "Enterprise"


def _user_fk(related_name: str, **extra: object) -> models.ForeignKey:
    """A reference to ``users`` that the backend database does not enforce."""
    return models.ForeignKey(
        "backend.User",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name=related_name,
        **extra,  # type: ignore[arg-type]
    )


class User(models.Model):
    """The backend's copy of an account; ``id`` equals the auth user's id."""

    id = models.CharField(primary_key=True, max_length=64)
    email = models.CharField(max_length=255, unique=True)
    # Set by migration backend.0002 when it lower-cased ``email``; its reverse restores it.
    email_before_lowercase = models.CharField(max_length=255, null=True, blank=True, editable=False)
    full_name = models.CharField(max_length=255, blank=True, default="")
    hashed_password = models.CharField(max_length=255, null=True, blank=True)
    is_active = models.BooleanField(default=True)
    is_superuser = models.BooleanField(default=False)
    is_developer = models.BooleanField(default=False)
    role = models.CharField(max_length=32, choices=Role.choices, default=Role.USER)
    permissions = models.JSONField(default=dict, blank=True)
    plan_tier = models.CharField(max_length=32, choices=PlanTier.choices, default=PlanTier.FREE)
    plan_started_at = models.DateTimeField(null=True, blank=True)
    plan_expires_at = models.DateTimeField(null=True, blank=True)
    feature_flags = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        db_table = "users"
        verbose_name = "backend user"

    def __str__(self) -> str:
        return self.email


class Secret(models.Model):
    """A user's stored credential; ``encrypted_value`` is never shown."""

    id = models.BigAutoField(primary_key=True)
    user = _user_fk("secrets")
    key = models.CharField(max_length=255)
    encrypted_value = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "secrets"
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="secrets_user_key_uniq")]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.key}"


class Assistant(models.Model):
    id = models.CharField(primary_key=True, max_length=64)
    object = models.CharField(max_length=32, default="assistant")
    created_at = models.BigIntegerField(default=epoch_now)
    user = _user_fk("assistants", null=True, blank=True)
    name = models.CharField(max_length=256, null=True, blank=True)
    description = models.TextField(null=True, blank=True)
    model = models.CharField(max_length=128)
    instructions = models.TextField(null=True, blank=True)
    tools = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True, db_column="metadata_")

    class Meta:
        db_table = "assistants"

    def __str__(self) -> str:
        return self.id


class Thread(models.Model):
    id = models.CharField(primary_key=True, max_length=64)
    object = models.CharField(max_length=32, default="thread")
    created_at = models.BigIntegerField(default=epoch_now)
    user = _user_fk("threads")
    metadata = models.JSONField(default=dict, blank=True, db_column="metadata_")

    class Meta:
        db_table = "threads"
        indexes = [models.Index(fields=["created_at"], name="threads_created_idx")]

    def __str__(self) -> str:
        return self.id


class Message(models.Model):
    id = models.CharField(primary_key=True, max_length=64)
    object = models.CharField(max_length=32, default="thread.message")
    created_at = models.BigIntegerField(default=epoch_now)
    thread = models.ForeignKey(
        Thread, on_delete=models.DO_NOTHING, db_constraint=False, related_name="messages"
    )
    role = models.CharField(max_length=32)
    content = models.JSONField(default=list, blank=True)
    assistant_id = models.CharField(max_length=64, null=True, blank=True)
    run_id = models.CharField(max_length=64, null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True, db_column="metadata_")
    # Primary key of the message's vector in Milvus (`message_embeddings`).
    embedding_id = models.CharField(max_length=64, null=True, blank=True, unique=True)

    class Meta:
        db_table = "messages"
        indexes = [models.Index(fields=["created_at"], name="messages_created_idx")]

    def __str__(self) -> str:
        return self.id


class Run(models.Model):
    id = models.CharField(primary_key=True, max_length=64)
    object = models.CharField(max_length=32, default="thread.run")
    created_at = models.BigIntegerField(default=epoch_now)
    thread = models.ForeignKey(Thread, on_delete=models.DO_NOTHING, db_constraint=False, related_name="runs")
    assistant = models.ForeignKey(
        Assistant, on_delete=models.DO_NOTHING, db_constraint=False, related_name="runs"
    )
    status = models.CharField(max_length=32, default="queued")
    model = models.CharField(max_length=128, blank=True, default="")
    instructions = models.TextField(null=True, blank=True)
    started_at = models.BigIntegerField(null=True, blank=True)
    completed_at = models.BigIntegerField(null=True, blank=True)
    usage = models.JSONField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True, db_column="metadata_")

    class Meta:
        db_table = "runs"

    def __str__(self) -> str:
        return self.id


class Step(models.Model):
    id = models.CharField(primary_key=True, max_length=64)
    object = models.CharField(max_length=32, default="thread.run.step")
    created_at = models.BigIntegerField(default=epoch_now)
    run = models.ForeignKey(Run, on_delete=models.DO_NOTHING, db_constraint=False, related_name="steps")
    thread = models.ForeignKey(Thread, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    assistant = models.ForeignKey(
        Assistant, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    type = models.CharField(max_length=32)
    status = models.CharField(max_length=32)
    step_details = models.JSONField(default=dict, blank=True)
    usage = models.JSONField(null=True, blank=True)

    class Meta:
        db_table = "steps"

    def __str__(self) -> str:
        return self.id


class ToolUsageLog(models.Model):
    id = models.BigAutoField(primary_key=True)
    user = _user_fk("tool_usage_logs")
    tool_name = models.CharField(max_length=128)
    category = models.CharField(max_length=64)
    execution_time_ms = models.IntegerField(default=0)
    tokens_used = models.IntegerField(default=0)
    cost_cents = models.IntegerField(default=0)
    status = models.CharField(max_length=32, default="success")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "tool_usage_logs"
        indexes = [models.Index(fields=["created_at"], name="tool_usage_created_idx")]

    def __str__(self) -> str:
        return f"{self.tool_name} {self.user_id}"


class CorpusAuditLog(models.Model):
    id = models.BigAutoField(primary_key=True)
    user = _user_fk("corpus_audit_logs", null=True, blank=True)
    action = models.CharField(max_length=64)
    corpus_id = models.CharField(max_length=128)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        db_table = "corpus_audit_logs"

    def __str__(self) -> str:
        return f"{self.action} {self.corpus_id}"


class Analysis(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    user = _user_fk("analyses")
    name = models.CharField(max_length=255)
    status = models.CharField(max_length=32, default="pending")
    config = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        db_table = "analyses"
        verbose_name_plural = "analyses"

    def __str__(self) -> str:
        return self.name


class AnalysisResult(models.Model):
    """A result row; the backend enforces this reference (same table owner)."""

    id = models.BigAutoField(primary_key=True)
    analysis = models.ForeignKey(Analysis, on_delete=models.CASCADE, related_name="results")
    result_type = models.CharField(max_length=64)
    data = models.JSONField(default=dict, blank=True)
    score = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "analysis_results"

    def __str__(self) -> str:
        return f"{self.analysis_id}:{self.result_type}"
