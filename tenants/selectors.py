"""Reads for tenants and API keys."""

from __future__ import annotations

from django.db.models import QuerySet

from tenants.models import ApiKey, Tenant


def tenant_get(*, slug: str) -> Tenant | None:
    return Tenant.objects.filter(slug=slug).first()


def apikey_list(*, tenant: Tenant | None = None) -> QuerySet[ApiKey]:
    keys = ApiKey.objects.select_related("tenant")
    return keys.filter(tenant=tenant) if tenant is not None else keys


def apikey_get(*, key_id: str) -> ApiKey | None:
    try:
        return ApiKey.objects.select_related("tenant").filter(pk=key_id).first()
    except Exception:  # a malformed UUID is simply not a key
        return None
