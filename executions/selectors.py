"""Reads of executions, always scoped to a tenant."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db.models import QuerySet

from executions.models import Execution
from tenants.models import Tenant


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def execution_get(*, tenant: Tenant, execution_id: str) -> Execution | None:
    """One of ``tenant``'s executions; None for unknown ids and other tenants' alike."""
    pk = _uuid(execution_id)
    if pk is None:
        return None
    return Execution.objects.select_related("session").filter(tenant=tenant, pk=pk).first()


def execution_list(
    *,
    tenant: Tenant,
    status: str | None = None,
    runtime: str | None = None,
    session_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: str | None = None,
    batch_id: uuid.UUID | None = None,
    limit: int = 50,
) -> QuerySet[Execution]:
    """``tenant``'s executions, newest first; ``before`` is the last id of the previous page.

    Without their network logs (up to hundreds of entries each): GET /executions/{id} has them.
    """
    rows = Execution.objects.filter(tenant=tenant).select_related("session").defer("network_log")
    if status:
        rows = rows.filter(status=status)
    if runtime:
        rows = rows.filter(runtime=runtime)
    if session_id:
        rows = rows.filter(session__session_id=session_id)
    if batch_id:
        rows = rows.filter(batch_id=batch_id)
    if since:
        rows = rows.filter(created_at__gte=since)
    if until:
        rows = rows.filter(created_at__lt=until)
    if before:
        cursor = execution_get(tenant=tenant, execution_id=before)
        if cursor is not None:
            rows = rows.filter(created_at__lt=cursor.created_at)
    return rows.order_by("-created_at")[:limit]
