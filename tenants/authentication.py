"""API key authentication for DRF, exactly as api.md describes it.

``Authorization: Bearer <key>`` (scheme case-insensitive, any number of spaces)
or a bare key. Keys are looked up by their HMAC digest and compared in constant
time; nothing is cached, so a revocation applies to the very next request.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from isol8_site.authorization import parse_authorization
from isol8_site.errors import Forbidden, Unauthorized, unauthorized
from tenants import throttle
from tenants.models import ApiKey, Tenant
from tenants.services import apikey_touch, key_digest, tenant_ensure_default
from tenants.tokens import TokenInvalidError, stream_token_read

# Where the ASGI guard leaves the principal of a request it authenticated.
PRINCIPAL_SCOPE_KEY = "isol8.principal"


@dataclass
class Principal:
    """Who is calling: a tenant, through one of its keys or the master key.

    ``scope`` is set when the caller came with a stream token instead of a
    key: it may then read only that one stream (tenants/tokens.py).
    """

    tenant: Tenant
    api_key: ApiKey | None
    is_master: bool
    scope: str | None = None

    is_authenticated = True
    is_anonymous = False


def authenticate_key(key: str, *, client: str | None = None) -> Principal:
    """Resolve a presented key to its principal, or raise the documented error.

    ``client`` (the caller's address) is throttled after too many failures.
    """
    throttle.check(client)
    try:
        return _authenticate(key)
    except Unauthorized:
        if key:
            throttle.failed(client)
        raise


def _authenticate(key: str) -> Principal:
    if not key:
        raise unauthorized("Missing Authorization header")
    master = settings.ISOL8_API_KEY
    if master and hmac.compare_digest(key_digest(key), key_digest(master)):
        return Principal(tenant=tenant_ensure_default(), api_key=None, is_master=True)
    digest = key_digest(key)
    try:
        # get(), not first(): no ORDER BY to build on every request (digests are unique).
        api_key: ApiKey | None = ApiKey.objects.select_related("tenant").get(digest=digest)
    except ApiKey.DoesNotExist:
        api_key = None
    if (
        api_key is None
        or not hmac.compare_digest(api_key.digest, digest)
        or api_key.revoked_at is not None
        or (api_key.expires_at is not None and api_key.expires_at <= timezone.now())
    ):
        raise unauthorized("Invalid API key")
    if not api_key.tenant.is_active:
        raise Forbidden("Tenant is disabled")
    apikey_touch(api_key=api_key)
    return Principal(tenant=api_key.tenant, api_key=api_key, is_master=False)


def authenticate_headers(scope: dict[str, Any]) -> Principal:
    """The caller of an ASGI request or WebSocket upgrade, from its Authorization header.

    Raises Unauthorized/Forbidden/RateLimited like every route; a key in the
    query string is never looked at.
    """
    header = next((bytes(v).decode("latin-1") for k, v in scope.get("headers", []) if k == b"authorization"), "")
    client = scope.get("client")
    return authenticate_key(parse_authorization(header), client=client[0] if client else None)


def authenticate_scope(scope: dict[str, Any]) -> None:
    """Authenticate an ASGI request from its headers, before its body is read (isol8_site/bodyguard.py).

    The principal is left in the scope, where DRF's authentication finds it,
    so a key is looked up once per request.
    """
    scope[PRINCIPAL_SCOPE_KEY] = authenticate_headers(scope)


def principal_of(request: Request) -> Principal:
    """The authenticated caller of a view (the permission class guarantees one)."""
    user = request.user
    if not isinstance(user, Principal):
        raise unauthorized("Missing Authorization header")
    return user


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Principal, Any]:
        # A request with a body was authenticated before its body was read (isol8_site/asgi.py).
        scope = getattr(request._request, "scope", None)
        principal = scope.get(PRINCIPAL_SCOPE_KEY) if isinstance(scope, dict) else None
        if not isinstance(principal, Principal):
            header = request.META.get("HTTP_AUTHORIZATION", "")
            principal = authenticate_key(parse_authorization(header), client=request.META.get("REMOTE_ADDR"))
        return principal, principal.api_key

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


class StreamTokenAuthentication(ApiKeyAuthentication):
    """The API key as everywhere, or else a stream token in ``?token=`` (stream routes only).

    The token must be for the scope the view names in ``token_scope(kwargs)``;
    an API key in the query string is never accepted (it is not a token).
    """

    def authenticate(self, request: Request) -> tuple[Principal, Any]:
        token = request.query_params.get("token")
        if request.META.get("HTTP_AUTHORIZATION") or not token:
            return super().authenticate(request)
        view = request.parser_context.get("view") if request.parser_context else None
        scope = view.token_scope(**view.kwargs) if view is not None else ""
        try:
            tenant, api_key = stream_token_read(token=token, scope=scope)
        except TokenInvalidError as exc:
            raise unauthorized(str(exc)) from exc
        principal = Principal(tenant=tenant, api_key=api_key, is_master=False, scope=scope)
        return principal, None


class IsTenant(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, Principal)


class IsMaster(BasePermission):
    """Master-only routes: a tenant key gets 403 forbidden."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if not isinstance(request.user, Principal) or not request.user.is_master:
            raise Forbidden("This route needs the master key")
        return True
