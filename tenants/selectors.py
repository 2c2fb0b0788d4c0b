"""Reads for tenants and API keys."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from tenants.models import ApiKey, Tenant


def tenant_get(*, slug: str) -> Tenant | None:
    return Tenant.objects.filter(slug=slug).first()


def apikey_list(*, tenant: Tenant | None = None) -> QuerySet[ApiKey]:
    keys = ApiKey.objects.select_related("tenant")
    return keys.filter(tenant=tenant) if tenant is not None else keys


def apikey_get(*, key_id: str) -> ApiKey | None:
    try:
        pk = uuid.UUID(key_id)
    except ValueError:
        return None  # a malformed id is simply not a key
    return ApiKey.objects.select_related("tenant").filter(pk=pk).first()
