"""Persistent sessions: one sandbox container per (tenant, sessionId)."""

from __future__ import annotations

from django.db import models

from tenants.models import Tenant


class SessionState(models.TextChoices):
    STARTING = "starting"  # row exists, its first execution is creating the container
    ACTIVE = "active"
    DEAD = "dead"  # the container is gone or broken; the next call says so
    STOPPED = "stopped"  # deleted by the client, pruned, or terminated in the admin


class Session(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="sessions")
    # The client's sessionId: unique only within its tenant.
    session_id = models.CharField(max_length=128)
    runtime = models.CharField(max_length=16)
    state = models.CharField(max_length=16, choices=SessionState.choices, default=SessionState.STARTING)
    state_reason = models.CharField(max_length=500, blank=True)
    container_id = models.CharField(max_length=80, blank=True)
    # The worker host owning the container; its executions go to that host's queue.
    worker_host = models.CharField(max_length=255, blank=True)
    limits = models.JSONField(default=dict)
    # The execution running now, if any (a second one gets 409 session_busy).
    busy_execution = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-last_used_at"]
        constraints = [
            # Live sessions are unique per tenant and id; stopped ones stay as history.
            models.UniqueConstraint(
                fields=["tenant", "session_id"],
                condition=~models.Q(state="stopped"),
                name="uniq_live_session_per_tenant",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.session_id}"

    @property
    def is_live(self) -> bool:
        return self.state in (SessionState.STARTING, SessionState.ACTIVE)
