"""The execution history: one row per run, whatever its outcome."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from tenants.models import Tenant


class Status(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    OK = "ok"  # ran, whatever its exit code
    TIMEOUT = "timeout"
    OOM = "oom"
    CANCELLED = "cancelled"
    ERROR = "error"  # the service could not run it; `error` says why


FINISHED = (Status.OK, Status.TIMEOUT, Status.OOM, Status.CANCELLED, Status.ERROR)


class Execution(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="executions")
    session = models.ForeignKey(
        "sessions_app.Session",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="executions",
    )
    runtime = models.CharField(max_length=16)
    code = models.TextField(blank=True)
    cmd = models.TextField(blank=True)
    # The rest of the request, minus secret values (only their names are kept).
    request = models.JSONField(default=dict)
    # The effective limits the run got (defaults and caps applied).
    limits = models.JSONField(default=dict)
    streamed = models.BooleanField(default=False)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    exit_code = models.IntegerField(null=True, blank=True)
    stdout = models.TextField(blank=True, help_text="Raw (untrimmed, secrets masked), bounded.")
    stderr = models.TextField(blank=True)
    stdout_truncated = models.BooleanField(default=False)
    stderr_truncated = models.BooleanField(default=False)
    # Bytes the program wrote per stream, including what maxOutputSize cut off.
    stdout_bytes = models.PositiveBigIntegerField(default=0)
    stderr_bytes = models.PositiveBigIntegerField(default=0)
    timed_out = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    files = models.JSONField(null=True, blank=True)
    # Where installPackages came from: "install" (first time), "cache", "prebuilt:<tag>".
    package_source = models.CharField(max_length=200, blank=True)
    # network "filtered": the egress proxy's log of the run, {"entries": [...], "totals": {...}}
    # (sandbox/spec.py RunResult.network_log); null for other runs.
    network_log = models.JSONField(null=True, blank=True)
    # A stateful session's cell: {"value", "outputs", "exception", "stateLost"}
    # (sandbox/cells.py); null for other runs.
    cell = models.JSONField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    worker_host = models.CharField(max_length=255, blank=True)
    container_id = models.CharField(max_length=80, blank=True)
    # POST /execute/batch: the batch it was submitted in (GET /executions?batch=).
    batch_id = models.UUIDField(null=True, blank=True, db_index=True)
    # Where the result is POSTed when the run ends (executions/webhooks.py).
    callback_url = models.URLField(max_length=2000, blank=True)

    class Meta:
        ordering = ["-created_at"]
        # duration_ms at the end makes both cover the dashboard's reads
        # (executions/dashboard.py): run seconds per tenant, latency
        # percentiles, counts by status and time, from the index alone.
        indexes = [
            # A tenant's history, newest first (GET /executions).
            models.Index(fields=["tenant", "-created_at", "duration_ms"]),
            # Executions by status and age (the reaper, the dashboard).
            models.Index(fields=["status", "created_at", "duration_ms"]),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.runtime}, {self.status})"

    @property
    def truncated(self) -> bool:
        return self.stdout_truncated or self.stderr_truncated


class IdempotencyKey(models.Model):
    """A client's ``Idempotency-Key``: the same key and body within a day get the first answer again.

    The row is inserted before anything runs; the unique constraint makes a
    concurrent retry with the same key fail its insert and wait for the first
    request's execution (or batch answer) instead of running the code again.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="idempotency_keys")
    key = models.CharField(max_length=255)
    route = models.CharField(max_length=32)
    body_digest = models.CharField(max_length=64, help_text="SHA-256 of the route and the canonical JSON body.")
    created_at = models.DateTimeField(default=timezone.now)
    execution = models.ForeignKey(Execution, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    answer = models.JSONField(null=True, blank=True, help_text="A batch's answer, given again on a replay.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "key"], name="idempotency_key_once_per_tenant")]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"{self.key} ({self.tenant_id})"


class WebhookAttempt(models.Model):
    """One try at POSTing an execution's result to its callbackUrl."""

    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="webhook_attempts")
    attempt = models.PositiveIntegerField()
    at = models.DateTimeField(auto_now_add=True)
    status_code = models.IntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    delivered = models.BooleanField(default=False)

    class Meta:
        ordering = ["execution", "attempt"]

    def __str__(self) -> str:
        return f"{self.execution_id} #{self.attempt}"
