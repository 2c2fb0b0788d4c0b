"""Persistent sessions: one sandbox container per (tenant, sessionId)."""

from __future__ import annotations

import re

from django.db import models

from tenants.models import Tenant

# A client's sessionId (api.md).
SESSION_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class SessionState(models.TextChoices):
    STARTING = "starting"  # row exists, its first execution is creating the container
    ACTIVE = "active"
    DEAD = "dead"  # the container is gone or broken; the next call says so
    STOPPED = "stopped"  # deleted by the client, pruned, or terminated in the admin


LIVE_STATES = (SessionState.STARTING, SessionState.ACTIVE)


class SessionQuerySet(models.QuerySet["Session"]):
    def live(self) -> SessionQuerySet:
        """Sessions that hold (or are making) a container: the one definition of "live"."""
        return self.filter(state__in=LIVE_STATES)

    def visible(self) -> SessionQuerySet:
        """Sessions a client still sees (live, or dead until deleted)."""
        return self.filter(state__in=(*LIVE_STATES, SessionState.DEAD))


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
    # network "filtered": the EgressPolicy (sandbox/netfilter.py) as JSON, fixed when
    # the session is created like its network (in ``limits``); every run of the
    # session carries it in its spec. {} for other networks.
    egress = models.JSONField(default=dict, blank=True)
    # A stateful session keeps one live interpreter: each run is a cell in it
    # (sandbox/cells.py). Fixed on the first execute, like the runtime.
    stateful = models.BooleanField(default=False)
    # The execution running now, if any (a second one gets 409 session_busy).
    busy_execution = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(auto_now_add=True)

    objects = SessionQuerySet.as_manager()

    class Meta:
        ordering = ["-last_used_at"]
        # The admin's live terminal into a session (tenants/tokens.py checks it on every use).
        permissions = [("open_terminal", "Can open a live terminal into a session")]
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
        return self.state in LIVE_STATES


class WorkerHost(models.Model):
    """A worker host (one Docker engine and its worker), as the admin drains it.

    Its liveness, engine state and load are in its heartbeat (isol8_site/wire.py);
    the row holds what an operator decides: ``draining`` stops new placements
    there (sessions and one-shot runs) while its sessions carry on until they end.
    The worker makes its row when it starts.
    """

    name = models.CharField(max_length=255, unique=True)
    draining = models.BooleanField(
        default=False, help_text="No new sessions or one-shot runs are placed here; its sessions finish"
    )
    first_seen_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
