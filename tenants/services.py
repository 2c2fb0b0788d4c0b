"""Writes for tenants and API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tenants.models import DEFAULT_TENANT_FIELDS, ApiKey, Tenant

KEY_PREFIX = "isol8_"
PREFIX_LENGTH = 10


def key_digest(plaintext: str) -> str:
    """HMAC-SHA256 of a key with the server's pepper; what the database stores."""
    return hmac.new(
        settings.ISOL8_KEY_PEPPER.encode(), plaintext.encode(), hashlib.sha256
    ).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    api_key: ApiKey
    plaintext: str  # shown once, never stored


def tenant_create(*, slug: str, name: str = "", **quotas: object) -> Tenant:
    tenant = Tenant(slug=slug, name=name or slug, **quotas)
    tenant.full_clean()
    tenant.save()
    return tenant


def tenant_ensure_default() -> Tenant:
    """The built-in tenant the master key executes under (read fresh: quotas may change)."""
    tenant, _ = Tenant.objects.get_or_create(slug=settings.ISOL8_DEFAULT_TENANT, defaults=DEFAULT_TENANT_FIELDS)
    return tenant


def apikey_create(
    *, tenant: Tenant, name: str = "", ttl: timedelta | None = None
) -> CreatedKey:
    plaintext = KEY_PREFIX + secrets.token_hex(32)
    api_key = ApiKey.objects.create(
        tenant=tenant,
        name=name,
        prefix=plaintext[:PREFIX_LENGTH],
        digest=key_digest(plaintext),
        expires_at=timezone.now() + ttl if ttl else None,
    )
    return CreatedKey(api_key=api_key, plaintext=plaintext)


def apikey_revoke(*, api_key: ApiKey) -> bool:
    """Revoke a key for good; False when it already was. Takes effect on the next request."""
    with transaction.atomic():
        updated = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
    api_key.refresh_from_db(fields=["revoked_at"])
    return bool(updated)


def apikey_touch(*, api_key: ApiKey) -> None:
    """Stamp last use, at most once per ISOL8_KEY_LAST_USED_RESOLUTION seconds."""
    now = timezone.now()
    resolution = timedelta(seconds=settings.ISOL8_KEY_LAST_USED_RESOLUTION)
    if api_key.last_used_at is None or now - api_key.last_used_at >= resolution:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now


def tenant_rotate_webhook_secret(*, tenant: Tenant) -> str:
    """A new secret for signing the tenant's callbacks (the old one stops at once); shown to the caller only."""
    secret = "whsec_" + secrets.token_hex(32)
    Tenant.objects.filter(pk=tenant.pk).update(webhook_secret=secret)
    tenant.webhook_secret = secret
    return secret
