"""Reads of sessions, always scoped to a tenant."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from sessions_app.models import Session, SessionState
from tenants.models import Tenant

LIVE_OR_DEAD = (SessionState.STARTING, SessionState.ACTIVE, SessionState.DEAD)


def session_get(*, tenant: Tenant, session_id: str) -> Session | None:
    """``tenant``'s session of that id that is not stopped; another tenant's never."""
    return (
        Session.objects.filter(tenant=tenant, session_id=session_id, state__in=LIVE_OR_DEAD)
        .order_by("-created_at")
        .first()
    )


def session_list(*, tenant: Tenant) -> QuerySet[Session]:
    return Session.objects.filter(tenant=tenant, state__in=LIVE_OR_DEAD).order_by("-last_used_at")


def live_session_limits(*, tenant: Tenant) -> list[dict[str, Any]]:
    """The container limits of ``tenant``'s live sessions."""
    return list(
        Session.objects.filter(tenant=tenant, state__in=[SessionState.STARTING, SessionState.ACTIVE])
        .values_list("limits", flat=True)
    )


def live_session_count(*, tenant: Tenant) -> int:
    return Session.objects.filter(
        tenant=tenant, state__in=[SessionState.STARTING, SessionState.ACTIVE]
    ).count()
