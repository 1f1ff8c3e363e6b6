"""What audits record: runs, per-check figures, drift findings and repairs."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class AuditRun(models.Model):
    """One audit: which checks ran, how, and how it ended."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        OK = "ok", "No drift"
        DRIFT = "drift", "Drift found"
        ERROR = "error", "Failed"

    class Trigger(models.TextChoices):
        COMMAND = "command", "Command"
        SCHEDULE = "schedule", "Schedule"
        ADMIN = "admin", "Admin"
        API = "api", "API"

    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.COMMAND)
    checks = models.JSONField(default=list)
    mode = models.CharField(max_length=16, default="full")  # full | incremental
    since = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING, db_index=True)
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    # The django-celery-beat PeriodicTask (by name) that started a scheduled run.
    schedule = models.CharField(max_length=200, blank=True, default="", db_index=True)

    class Meta:
        ordering = ["-started_at"]
        get_latest_by = "started_at"
        permissions = [("run_audit", "Can start an audit from the admin")]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.status})"

    @property
    def duration(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class CheckRun(models.Model):
    """The figures of one check in one run."""

    run = models.ForeignKey(AuditRun, on_delete=models.CASCADE, related_name="check_runs")
    check_name = models.CharField(max_length=200, db_index=True)
    kind = models.CharField(max_length=32)
    status = models.CharField(max_length=16, choices=AuditRun.Status.choices)
    compared = models.BigIntegerField(default=0)
    segments = models.IntegerField(default=0)
    rows_fetched = models.BigIntegerField(default=0)
    in_flight = models.IntegerField(default=0)
    drift_count = models.IntegerField(default=0)
    duration = models.FloatField(default=0.0)
    watermark = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    # How the check ran (row parity: aggregate, cached, ranges, stream, fanout...), and every
    # other figure it reported (connections, candidates, phase seconds, stale_cache...).
    strategy = models.CharField(max_length=64, blank=True, default="")
    figures = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "check_name"], name="checkrun_unique")]
        indexes = [
            models.Index(fields=["check_name", "status", "watermark"], name="checkrun_watermark_idx"),
            # The admin dashboard's latest run of each check: one index probe per check.
            models.Index(fields=["check_name", "-id"], name="checkrun_latest_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.check_name} in run {self.run_id}"


class Drift(models.Model):
    """A finding, kept across runs: the same (check, kind, key) is the same drift."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"
        MUTED = "muted", "Muted"
        REPAIRED = "repaired", "Repaired"
        RESOLVED = "resolved", "Resolved"

    check_name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16)
    key = models.CharField(max_length=512)
    severity = models.CharField(max_length=16, default="error")
    store = models.CharField(max_length=32, default="sql")
    fields = models.JSONField(default=list)
    source = models.JSONField(null=True, blank=True)  # redacted
    target = models.JSONField(null=True, blank=True)  # redacted
    detail = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    first_seen = models.DateTimeField(default=timezone.now, db_index=True)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)
    times_seen = models.IntegerField(default=1)
    first_run = models.ForeignKey(
        AuditRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    last_run = models.ForeignKey(AuditRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    resolved_at = models.DateTimeField(null=True, blank=True)
    muted_until = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True, default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["check_name", "kind", "key"], name="drift_identity")]
        # Every audit updates each drift it sees again (last_seen, last_run), and each index is
        # written again: kind, severity and store take a handful of values each and are only ever
        # filtered with a check or status, so they carry none, and no column a LIKE twin (16
        # indexes are now 9; on a copy of the table, 100,000 seen-again updates took 2.3-2.9 s
        # with the 16 and 1.7-2.0 s with 10).
        indexes = [
            models.Index(fields=["check_name", "status"], name="drift_check_status_idx"),
            # The dashboard's unresolved drift across checks.
            models.Index(fields=["status"], name="drift_status_idx"),
            # The admin's search by key (exact or prefix; LIKE 'abc%' needs the pattern opclass).
            models.Index(fields=["key"], name="drift_key_idx", opclasses=["varchar_pattern_ops"]),
        ]
        permissions = [
            ("review_drift", "Can acknowledge, mute and re-verify drift"),
            ("repair_drift", "Can repair drift"),
        ]

    def __str__(self) -> str:
        return f"{self.check_name} {self.kind} {self.key}"


class DriftSighting(models.Model):
    """One audit run that saw one drift (recorded when the run finishes; see consistency.review)."""

    drift = models.ForeignKey(Drift, on_delete=models.CASCADE, related_name="sightings")
    run = models.ForeignKey(AuditRun, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["drift", "run"], name="driftsighting_unique")]

    def __str__(self) -> str:
        return f"drift {self.drift_id} in run {self.run_id}"


class RepairLog(models.Model):
    """Who repaired what, how, and whether the re-check passed."""

    drift = models.ForeignKey(Drift, on_delete=models.SET_NULL, null=True, blank=True, related_name="repairs")
    check_name = models.CharField(max_length=200)
    key = models.CharField(max_length=512)
    action = models.CharField(max_length=64)
    plan = models.JSONField(default=dict)
    executed = models.BooleanField(default=False)
    verified = models.BooleanField(null=True)
    result = models.TextField(blank=True, default="")
    performed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    performed_as = models.CharField(max_length=150, blank=True, default="")  # OS user for the command
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.action} {self.check_name} {self.key}"


class UserSyncState(models.Model):
    """The last outbox version applied to a backend user; an older event is ignored."""

    user_id = models.CharField(primary_key=True, max_length=64)
    version = models.BigIntegerField(default=0)
    applied_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.user_id} v{self.version}"


class AnalyticsOutbox(models.Model):
    """A message or tool-usage change waiting for export to ClickHouse (written with the change)."""

    id = models.BigAutoField(primary_key=True)
    table = models.CharField(max_length=64)
    row = models.JSONField()  # the event row, JSON-encoded, in the table's column order
    version = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.table} v{self.version}"


class Alert(models.Model):
    """One notification about new drift found by one audit run, per channel; sent once."""

    run = models.ForeignKey(AuditRun, on_delete=models.CASCADE, related_name="alerts")
    channel = models.CharField(max_length=16)  # mail | webhook
    drift_count = models.IntegerField(default=0)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.IntegerField(default=0)
    error = models.TextField(blank=True, default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "channel"], name="alert_run_channel")]

    def __str__(self) -> str:
        return f"{self.channel} alert for run {self.run_id}"


class AuditSegment(models.Model):
    """One block range of one side of a fanned-out row parity audit (``consistency.engine.fanout``).

    Working state, deleted when the audit ends: a scan segment holds the IBLT of its rows'
    fingerprints (``partial``), a locate segment the rows it found for the decoded fingerprints.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    job = models.UUIDField(db_index=True)
    check_name = models.CharField(max_length=200)
    side = models.CharField(max_length=8)  # source | target
    phase = models.CharField(max_length=8)  # scan | locate
    index = models.IntegerField()
    block_from = models.BigIntegerField()
    block_to = models.BigIntegerField(null=True, blank=True)  # None: to the end of the table
    unit_blocks = models.IntegerField()  # blocks read by one query of the segment
    cells = models.IntegerField()  # IBLT sub-table size, the same in every segment of a job
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    claimed_by = models.CharField(max_length=255, blank=True, default="")  # the task, or the coordinator
    worker = models.CharField(max_length=255, blank=True, default="")  # host:pid of the claimer
    claimed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.IntegerField(default=0)
    rows = models.BigIntegerField(default=0)
    partial = models.BinaryField(null=True, blank=True)  # scan: the IBLT's cells
    wanted = models.BinaryField(null=True, blank=True)  # locate: int64 fingerprints to find
    found = models.JSONField(default=list, blank=True)  # locate: [key, fingerprint] pairs
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "phase", "side", "index"], name="auditsegment_unique")
        ]

    def __str__(self) -> str:
        return f"{self.check_name} {self.phase} {self.side} #{self.index} ({self.status})"
