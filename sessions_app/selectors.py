"""Reads of sessions, scoped to a tenant; the last one is the operator's count across all of them."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, QuerySet

from sessions_app.models import Session
from tenants.models import Tenant


def session_get(*, tenant: Tenant, session_id: str) -> Session | None:
    """``tenant``'s session of that id that is not stopped; another tenant's never."""
    return Session.objects.visible().filter(tenant=tenant, session_id=session_id).order_by("-created_at").first()


def session_list(*, tenant: Tenant) -> QuerySet[Session]:
    return Session.objects.visible().filter(tenant=tenant).order_by("-last_used_at")


def live_session_limits(*, tenant: Tenant) -> list[dict[str, Any]]:
    """The container limits of ``tenant``'s live sessions."""
    return list(Session.objects.live().filter(tenant=tenant).values_list("limits", flat=True))


def live_session_count(*, tenant: Tenant) -> int:
    return Session.objects.live().filter(tenant=tenant).count()


def live_sessions_per_host() -> dict[str, int]:
    """Live sessions of all tenants by the worker host holding their container ("" while not placed yet).

    Not tenant-scoped: the operator's view (the admin dashboard).
    """
    rows = Session.objects.live().order_by().values_list("worker_host").annotate(n=Count("pk"))
    return dict(rows)
