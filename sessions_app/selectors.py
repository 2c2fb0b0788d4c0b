"""Reads of sessions, always scoped to a tenant."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

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
