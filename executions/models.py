"""The execution history: one row per run, whatever its outcome."""

from __future__ import annotations

import uuid

from django.db import models

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

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    worker_host = models.CharField(max_length=255, blank=True)
    container_id = models.CharField(max_length=80, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"]),
            models.Index(fields=["status", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.runtime}, {self.status})"

    @property
    def truncated(self) -> bool:
        return self.stdout_truncated or self.stderr_truncated
