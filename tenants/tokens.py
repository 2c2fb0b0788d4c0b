"""Short-lived stream tokens, for clients that cannot send an Authorization header.

A browser's ``EventSource`` (and ``WebSocket``) cannot set headers, and an API
key must never travel in a URL (URLs end up in logs, histories and Referer
headers). Instead a client holding the key mints a token for one resource and
gives the browser only that token:

* ``execution:<uuid>`` (``POST /executions/{id}/token``): reading that one
  execution's event stream;
* ``session:<id>`` (``POST /session/{id}/token``, or the admin's terminal page
  for a staff user): one ``GET /execute/ws`` connection per use, whose
  execution must run in that session of that tenant.

A token is a signed, timestamped value (Django's signing, keyed with
SECRET_KEY and a salt of its own) naming the tenant, who minted it (an API key,
the master key, or a staff user of the admin) and its scope. It is refused
after ISOL8_STREAM_TOKEN_TTL seconds, for any other scope, and as soon as the
key that minted it is revoked or expires, the staff user loses the right, or
its tenant is disabled (each use reads them again). It grants that one scope,
nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
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


def stream_token_mint(
    *, tenant: Tenant, api_key: ApiKey | None, scope: str, staff_user_id: int | None = None
) -> StreamToken:
    """A token for ``scope`` of ``tenant``, minted by ``api_key`` (None: the master key) or a staff user."""
    payload: dict[str, object] = {"t": tenant.pk, "k": str(api_key.pk) if api_key is not None else None, "s": scope}
    if staff_user_id is not None:
        payload = {"t": tenant.pk, "u": staff_user_id, "s": scope}
    token = signing.dumps(payload, salt=SALT, compress=False)
    ttl = timedelta(seconds=settings.ISOL8_STREAM_TOKEN_TTL)
    return StreamToken(token=token, expires_at=timezone.now() + ttl)


def stream_token_read(*, token: str, scope: str) -> tuple[Tenant, ApiKey | None]:
    """The tenant (and minting key) of a valid token for ``scope``; raises TokenInvalidError otherwise."""
    payload = _payload(token)
    if payload.get("s") != scope:
        raise TokenInvalidError("This stream token is for another stream")
    return _minter(payload)


def session_token_read(*, token: str) -> tuple[Tenant, ApiKey | None, str]:
    """(tenant, minting key, session id) of a valid session token; raises TokenInvalidError otherwise."""
    payload = _payload(token)
    scope = payload.get("s")
    if not isinstance(scope, str) or not scope.startswith(SESSION_PREFIX):
        raise TokenInvalidError("This token is not for a session's WebSocket")
    tenant, api_key = _minter(payload)
    return tenant, api_key, scope.removeprefix(SESSION_PREFIX)


def _payload(token: str) -> dict[str, object]:
    try:
        payload = signing.loads(token, salt=SALT, max_age=settings.ISOL8_STREAM_TOKEN_TTL)
    except signing.BadSignature as exc:  # SignatureExpired is a BadSignature
        raise TokenInvalidError("Invalid or expired stream token") from exc
    if not isinstance(payload, dict):
        raise TokenInvalidError("Invalid or expired stream token")
    return payload


def _minter(payload: dict[str, object]) -> tuple[Tenant, ApiKey | None]:
    """The token's tenant and key, if whoever minted it may still do so now."""
    key_id, tenant_pk = payload.get("k"), payload.get("t")
    if not isinstance(tenant_pk, int):
        raise TokenInvalidError("Invalid or expired stream token")
    if "u" in payload:
        tenant = Tenant.objects.filter(pk=tenant_pk, is_active=True).first()
        if tenant is None or not _staff_may_open_terminals(payload["u"]):
            raise TokenInvalidError("Invalid or expired stream token")
        return tenant, None
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


def _staff_may_open_terminals(user_id: object) -> bool:
    """Whether the admin user who minted a token is still active staff allowed to open terminals."""
    user = get_user_model().objects.filter(pk=user_id).first() if isinstance(user_id, int) else None
    return bool(user and user.is_active and user.is_staff and user.has_perm(TERMINAL_PERMISSION))


SESSION_PREFIX = "session:"
# The admin's terminal into a session needs this model permission (superusers have it).
TERMINAL_PERMISSION = "sessions_app.open_terminal"


def execution_scope(execution_id: object) -> str:
    return f"execution:{execution_id}"


def session_scope(session_id: str) -> str:
    return f"{SESSION_PREFIX}{session_id}"
