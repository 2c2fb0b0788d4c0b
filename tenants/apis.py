"""isol8's key routes, for the master key only: /auth/keys and /auth/login.

They manage the same ApiKey rows as the admin. ``tenantId`` names a tenant by its
slug; an unknown one is 404. Like isol8, keys made here expire after ``ttlMs``
(default one day); keys made in the admin or with ``apikey_create`` do not unless
given an expiry.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from isol8_site.errors import not_found, validation_error
from isol8_site.openapi import AUTH, BODY, errors
from isol8_site.serializers import Integer, StrictSerializer, Text
from tenants.authentication import IsMaster
from tenants.models import ApiKey, Tenant
from tenants.selectors import apikey_get, apikey_list, tenant_get
from tenants.services import apikey_create, apikey_revoke

DEFAULT_TTL_MS = 86_400_000
MAX_TTL_MS = 10 * 365 * 86_400_000


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": str(key.pk),
        "name": key.name,
        "keyPrefix": key.display_prefix,
        "tenantId": key.tenant.slug,
        "createdAt": _iso(key.created_at),
        "expiresAt": _iso(key.expires_at),
        "lastUsedAt": _iso(key.last_used_at),
        "revoked": key.is_revoked,
    }


def _tenant(slug: str | None) -> Tenant:
    tenant = tenant_get(slug=slug or settings.ISOL8_DEFAULT_TENANT)
    if tenant is None:
        raise not_found(f"Tenant {slug!r} not found")
    return tenant


class KeyCreateSerializer(StrictSerializer):
    name = Text(required=False, allow_blank=True, max_length=200)
    tenantId = Text(required=False)
    ttlMs = Integer(required=False, min_value=1, max_value=MAX_TTL_MS)


class KeySerializer(serializers.Serializer):
    """A key as the key routes show it (key_json; documentation)."""

    id = serializers.CharField()
    name = serializers.CharField()
    keyPrefix = serializers.CharField(help_text="The first 10 characters and ...")
    tenantId = serializers.CharField(help_text="The tenant's slug")
    createdAt = serializers.DateTimeField()
    expiresAt = serializers.DateTimeField(allow_null=True)
    lastUsedAt = serializers.DateTimeField(allow_null=True)
    revoked = serializers.BooleanField()


class MasterApi(APIView):
    permission_classes = [IsMaster]

    def body(self, request: Request) -> dict[str, Any]:
        data = request.data  # {} for an empty body; a JSON null is not an object
        if not isinstance(data, dict):
            raise validation_error("The body must be a JSON object")
        form = KeyCreateSerializer(data=data)
        form.is_valid(raise_exception=True)
        return dict(form.validated_data)


class KeysApi(MasterApi):
    """POST /auth/keys (create) and GET /auth/keys[?tenantId=] (list)."""

    @extend_schema(
        operation_id="keys_create",
        summary="Create a tenant key (master key); the plaintext is shown only here",
        request=KeyCreateSerializer,
        responses={
            201: inline_serializer("KeyCreated", {
                "id": serializers.CharField(),
                "key": serializers.CharField(),
                "name": serializers.CharField(),
                "keyPrefix": serializers.CharField(),
                "tenantId": serializers.CharField(),
                "expiresAt": serializers.DateTimeField(allow_null=True),
            }),
            **errors(*AUTH, *BODY, 404),
        },
    )
    def post(self, request: Request) -> Response:
        data = self.body(request)
        if not data.get("name", "").strip():
            raise validation_error("name is required")
        tenant = _tenant(data.get("tenantId"))
        created = apikey_create(
            tenant=tenant,
            name=data["name"],
            ttl=timedelta(milliseconds=data.get("ttlMs", DEFAULT_TTL_MS)),
        )
        key = created.api_key
        return Response(
            {
                "id": str(key.pk),
                "key": created.plaintext,
                "name": key.name,
                "keyPrefix": key.display_prefix,
                "tenantId": tenant.slug,
                "expiresAt": _iso(key.expires_at),
            },
            status=201,
        )

    @extend_schema(
        operation_id="keys_list",
        summary="List keys, of one tenant or all (master key)",
        parameters=[OpenApiParameter("tenantId", str, description="A tenant's slug")],
        responses={200: inline_serializer("KeyList", {"keys": KeySerializer(many=True)}), **errors(*AUTH, 404)},
    )
    def get(self, request: Request) -> Response:
        slug = request.query_params.get("tenantId")
        keys = apikey_list(tenant=_tenant(slug) if slug else None)
        return Response({"keys": [key_json(k) for k in keys]})


class KeyRevokeApi(MasterApi):
    """DELETE /auth/keys/{id}: revoke (irreversibly; the row stays for history)."""

    @extend_schema(
        operation_id="keys_revoke",
        summary="Revoke a key, irreversibly (master key)",
        responses={200: inline_serializer("KeyRevoked", {"ok": serializers.BooleanField(),
                                                         "id": serializers.CharField()}),
                   **errors(*AUTH, 404)},
    )
    def delete(self, request: Request, key_id: str) -> Response:
        key = apikey_get(key_id=key_id)
        if key is None:
            raise not_found("Key not found")
        apikey_revoke(api_key=key)
        return Response({"ok": True, "id": str(key.pk)})


class LoginApi(MasterApi):
    """POST /auth/login: a short-lived key for a tenant (isol8's CLI `login`)."""

    @extend_schema(
        operation_id="login",
        summary="A short-lived key for a tenant (master key; isol8's CLI login)",
        request=KeyCreateSerializer,
        responses={
            200: inline_serializer("LoginAnswer", {
                "token": serializers.CharField(),
                "expiresAt": serializers.DateTimeField(allow_null=True),
                "keyId": serializers.CharField(),
            }),
            **errors(*AUTH, *BODY, 404),
        },
    )
    def post(self, request: Request) -> Response:
        data = self.body(request)
        tenant = _tenant(data.get("tenantId"))
        name = data.get("name") or f"login-{timezone.now().isoformat()}"
        created = apikey_create(
            tenant=tenant, name=name, ttl=timedelta(milliseconds=data.get("ttlMs", DEFAULT_TTL_MS))
        )
        return Response(
            {
                "token": created.plaintext,
                "expiresAt": _iso(created.api_key.expires_at),
                "keyId": str(created.api_key.pk),
            }
        )
