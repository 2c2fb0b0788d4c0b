"""Short-lived stream tokens, for clients that cannot send an Authorization header.

A browser's ``EventSource`` (and ``WebSocket``) cannot set headers, and an API
key must never travel in a URL (URLs end up in logs, histories and Referer
headers). Instead a client holding the key mints a token for one resource,
``POST /executions/{id}/token``, and gives the browser only that token.

A token is a signed, timestamped value (Django's signing, keyed with
SECRET_KEY and a salt of its own) naming the tenant, the key that minted it and
one scope such as ``execution:<uuid>``. It is refused after
ISOL8_STREAM_TOKEN_TTL seconds, for any other scope, and as soon as the key
that minted it is revoked or expires or its tenant is disabled (each use reads
the key again). It grants reading that one stream, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core import signing
from django.utils import timezone

from tenants.models import ApiKey, Tenant

SALT = "isol8.stream-token"


@dataclass(frozen=True)
class StreamToken:
    token: str
    expires_at: datetime


class TokenInvalidError(Exception):
    """The token is forged, expired, for another scope, or its key is no longer valid."""


def stream_token_mint(*, tenant: Tenant, api_key: ApiKey | None, scope: str) -> StreamToken:
    """A token for ``scope`` of ``tenant``; ``api_key`` None means the master key minted it."""
    payload = {"t": tenant.pk, "k": str(api_key.pk) if api_key is not None else None, "s": scope}
    token = signing.dumps(payload, salt=SALT, compress=False)
    ttl = timedelta(seconds=settings.ISOL8_STREAM_TOKEN_TTL)
    return StreamToken(token=token, expires_at=timezone.now() + ttl)


def stream_token_read(*, token: str, scope: str) -> tuple[Tenant, ApiKey | None]:
    """The tenant (and minting key) of a valid token for ``scope``; raises TokenInvalidError otherwise."""
    try:
        payload = signing.loads(token, salt=SALT, max_age=settings.ISOL8_STREAM_TOKEN_TTL)
    except signing.BadSignature as exc:  # SignatureExpired is a BadSignature
        raise TokenInvalidError("Invalid or expired stream token") from exc
    if not isinstance(payload, dict) or payload.get("s") != scope:
        raise TokenInvalidError("This stream token is for another stream")
    key_id, tenant_pk = payload.get("k"), payload.get("t")
    if not isinstance(tenant_pk, int):
        raise TokenInvalidError("Invalid or expired stream token")
    if key_id is None:
        tenant = Tenant.objects.filter(pk=tenant_pk).first()
        if tenant is None or not tenant.is_active or not settings.ISOL8_API_KEY:
            raise TokenInvalidError("Invalid or expired stream token")
        return tenant, None
    api_key = ApiKey.objects.select_related("tenant").filter(pk=str(key_id), tenant_id=tenant_pk).first()
    if (
        api_key is None
        or api_key.revoked_at is not None
        or (api_key.expires_at is not None and api_key.expires_at <= timezone.now())
        or not api_key.tenant.is_active
    ):
        raise TokenInvalidError("Invalid or expired stream token")
    return api_key.tenant, api_key


def execution_scope(execution_id: object) -> str:
    return f"execution:{execution_id}"
