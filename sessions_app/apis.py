"""HTTP API of sessions: list, delete, and file transfer (isol8's routes)."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlencode

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from isol8_site.errors import PayloadTooLarge, validation_error
from isol8_site.openapi import AUTH, BODY, errors
from isol8_site.serializers import StrictSerializer, Text, check_sandbox_path
from sessions_app import selectors, services
from sessions_app.models import SESSION_ID, Session
from sessions_app.serializers import SessionIdField
from tenants.authentication import principal_of
from tenants.tokens import session_scope, stream_token_mint


def _iso(value: object) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None  # type: ignore[attr-defined]


def session_json(session: Session) -> dict[str, object]:
    return {
        "id": session.session_id,
        "isActive": session.busy_execution is not None,
        "lastAccessedAt": _iso(session.last_used_at),
        "runtime": session.runtime,
        "createdAt": _iso(session.created_at),
        "state": session.state,
    }


class SessionSerializer(serializers.Serializer):
    """A session as GET /sessions lists it (session_json; documentation)."""

    id = serializers.CharField()
    isActive = serializers.BooleanField(help_text="Running an execution right now")
    lastAccessedAt = serializers.DateTimeField(allow_null=True)
    runtime = serializers.CharField()
    createdAt = serializers.DateTimeField()
    state = serializers.CharField(help_text="starting, ready, dead or stopped")


OK = inline_serializer("Ok", {"ok": serializers.BooleanField()})
# A file operation reaches the session's container through its worker.
FILE_ERRORS = (*AUTH, 400, 404, 409, 503, 507)


class SessionListApi(APIView):
    """GET /sessions: this tenant's sessions only."""

    @extend_schema(
        operation_id="sessions_list",
        summary="This tenant's sessions",
        responses={200: inline_serializer("SessionList", {"sessions": SessionSerializer(many=True)}),
                   **errors(*AUTH)},
    )
    def get(self, request: Request) -> Response:
        principal = principal_of(request)
        sessions = selectors.session_list(tenant=principal.tenant)
        return Response({"sessions": [session_json(s) for s in sessions]})


class SessionDeleteApi(APIView):
    """DELETE /session/{id}: stop the caller's session; ok also for unknown ids."""

    @extend_schema(
        operation_id="session_delete",
        summary="Stop and remove one of this tenant's sessions",
        description="`ok` also for an id this tenant has no session under (another tenant's is untouched).",
        responses={200: OK, **errors(*AUTH)},
    )
    def delete(self, request: Request, session_id: str) -> Response:
        principal = principal_of(request)
        session = selectors.session_get(tenant=principal.tenant, session_id=session_id)
        if session is not None:
            services.session_stop(session=session, reason="deleted by the client")
        return Response({"ok": True})


class SessionTokenApi(APIView):
    """POST /session/{id}/token: a short-lived token for a browser's WebSocket into this session."""

    @extend_schema(
        operation_id="session_token",
        summary="A short-lived token to open GET /execute/ws into this session from a browser",
        description=(
            "A browser's WebSocket cannot send `Authorization`. Connect to `wsUrl` instead: the "
            "connection is this tenant's, and its `execute` must name this `sessionId` (a session "
            "that does not exist yet is created by it, as over HTTP). Valid `ISOL8_STREAM_TOKEN_TTL` "
            "seconds, for any number of connections, and dead at once when the key is revoked."
        ),
        request=None,
        responses={
            200: inline_serializer("SessionToken", {
                "token": serializers.CharField(),
                "expiresAt": serializers.DateTimeField(),
                "wsUrl": serializers.CharField(help_text="Open it with `new WebSocket(...)`: no header needed"),
            }),
            **errors(*AUTH, 400),
        },
    )
    def post(self, request: Request, session_id: str) -> Response:
        principal = principal_of(request)
        session_id = _session_id(session_id)
        minted = stream_token_mint(
            tenant=principal.tenant, api_key=principal.api_key, scope=session_scope(session_id)
        )
        return Response({
            "token": minted.token,
            "expiresAt": _iso(minted.expires_at),
            "wsUrl": "/execute/ws?" + urlencode({"token": minted.token}),
        })


class SessionRestartApi(APIView):
    """POST /session/{id}/restart: restart a stateful session's interpreter; its files stay."""

    @extend_schema(
        operation_id="session_restart",
        summary="Restart a stateful session's interpreter (variables are gone, files in /sandbox stay)",
        description=(
            "Answers once the new interpreter is ready. 400 for a session that is not stateful, 409 while it "
            "runs a cell, 404 for an id this tenant has no session under."
        ),
        request=None,
        responses={
            200: inline_serializer("SessionRestarted", {"ok": serializers.BooleanField(),
                                                         "restarted": serializers.BooleanField()}),
            **errors(*FILE_ERRORS),
        },
    )
    def post(self, request: Request, session_id: str) -> Response:
        principal = principal_of(request)
        services.session_restart(tenant=principal.tenant, session_id=_session_id(session_id))
        return Response({"ok": True, "restarted": True})


def _session_id(value: object) -> str:
    if not isinstance(value, str) or not SESSION_ID.match(value):
        raise validation_error("sessionId: must be 1-128 characters of A-Z a-z 0-9 . _ -")
    return value


class FileApi(APIView):
    """POST /file (upload, base64) and GET /file (download) in a session's /sandbox."""

    class UploadSerializer(StrictSerializer):
        sessionId = SessionIdField()
        path = Text()
        content = Text(allow_blank=True)

    @extend_schema(
        operation_id="file_upload",
        summary="Write a file into a session's /sandbox",
        request=UploadSerializer,
        responses={200: OK, **errors(*FILE_ERRORS, *BODY)},
    )
    def post(self, request: Request) -> Response:
        principal = principal_of(request)
        if not isinstance(request.data, dict):
            raise validation_error("The body must be a JSON object")
        form = self.UploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        session_id = _session_id(data["sessionId"])
        path = check_sandbox_path(data["path"], allow_tmp=False)
        try:
            content = base64.b64decode(data["content"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise validation_error("content: not valid base64") from exc
        if len(content) > settings.ISOL8_FILE_MAX_BYTES:
            raise PayloadTooLarge(f"File is larger than {settings.ISOL8_FILE_MAX_BYTES} bytes")
        op = {"op": "put_file", "path": path, "content": data["content"]}
        services.file_operation(tenant=principal.tenant, session_id=session_id, op=op)
        return Response({"ok": True})

    @extend_schema(
        operation_id="file_download",
        summary="Read a file from a session's /sandbox",
        parameters=[
            OpenApiParameter("sessionId", str, required=True, pattern=SESSION_ID.pattern),
            OpenApiParameter("path", str, required=True, description="Under /sandbox; relative to it if relative"),
        ],
        responses={200: inline_serializer("FileContent", {"content": serializers.CharField(help_text="base64")}),
                   **errors(*FILE_ERRORS, 413)},
    )
    def get(self, request: Request) -> Response:
        principal = principal_of(request)
        session_id = request.query_params.get("sessionId")
        raw_path = request.query_params.get("path")
        if not session_id or not raw_path:
            raise validation_error("Missing sessionId or path")
        session_id = _session_id(session_id)
        path = check_sandbox_path(raw_path, allow_tmp=False)
        op = {"op": "get_file", "path": path, "maxBytes": settings.ISOL8_FILE_MAX_BYTES}
        data = services.file_operation(tenant=principal.tenant, session_id=session_id, op=op)
        return Response({"content": data["content"]})
