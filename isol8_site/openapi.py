"""The OpenAPI 3 document (GET /openapi.json) and the docs page (GET /docs).

drf-spectacular builds the document from the views and their ``extend_schema``
annotations; this module holds what every route shares: the error object and
the statuses each kind of route can answer with, and a hook that writes what
the generator cannot infer (event-stream bodies, ``Retry-After`` headers).
Swagger UI's files come from drf-spectacular-sidecar through the static files:
the page works on a machine without Internet access.

A test fuzzes the live server from this document (tests/stack/service/test_openapi.py):
any status or body a route can give must be written here.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularSwaggerView
from rest_framework import serializers

from isol8_site.errors import STATUS_BY_CODE
from isol8_site.serializers import StrictSerializer

SSE_EXTENSION = "x-isol8-event-stream"  # marks a route whose 200 is an event stream (see postprocess)


class StrictSerializerSchema(OpenApiSerializerExtension):
    """A StrictSerializer refuses unknown fields: say so, and list the isol8 options it accepts and ignores.

    A serializer's ``openapi_extra`` adds what its ``validate`` checks across fields (``oneOf``).
    """

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        for name in getattr(self.target, "known_extra", ()):
            schema["properties"][name] = {"description": "Accepted from isol8 clients; the server decides it."}
        schema["additionalProperties"] = False
        schema.update(getattr(self.target, "openapi_extra", {}))
        return schema


class ErrorSerializer(serializers.Serializer):
    """Every error the service answers with (api.md, "Error shape and status codes")."""

    error = serializers.CharField(help_text="A sentence a person can act on.")
    code = serializers.ChoiceField(choices=sorted(STATUS_BY_CODE), help_text="The machine-readable reason.")
    details = serializers.JSONField(required=False, help_text="More about the failure, when there is more.")


WHEN = {
    400: "The body, a parameter or the URL is invalid (`invalid_json`, `validation_error`, "
    "`unsupported_runtime`, `path_outside_sandbox`).",
    401: "No key, or an unknown, revoked or expired one (`unauthorized`).",
    403: "The key may not do this: a disabled tenant, a master-only route, or an option the tenant's policy "
    "does not allow (`forbidden`, `policy_denied`).",
    404: "No such object for this tenant (`not_found`).",
    405: "The route does not take this method (`method_not_allowed`).",
    406: "The client accepts no event stream (`not_acceptable`).",
    408: "The body did not arrive in time (`request_timeout`).",
    409: "The session is running another execution, is dead, or has not started (`session_busy`, "
    "`session_dead`, `session_not_started`).",
    413: "The body is over the route's limit (`payload_too_large`).",
    415: "The body is not `application/json` (`unsupported_media_type`).",
    422: "The setup script or the package install failed (`setup_failed`, `install_failed`), or an "
    "Idempotency-Key was used before with another body (`idempotency_mismatch`).",
    429: "A tenant quota or the failed-authentication throttle is reached (`quota_exceeded`, "
    "`rate_limited`); see `Retry-After`.",
    503: "No capacity now: queue full, no worker alive, Docker down (`unavailable`); see `Retry-After`.",
    507: "The session's sandbox is out of space (`sandbox_full`).",
}

# What any route that takes a key can answer (400: a NUL character in the URL);
# a route that reads a body adds BODY.
AUTH = (400, 401, 403, 405, 429)
BODY = (400, 408, 413, 415)


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """The error responses of a route, each with the error object and what it means."""
    return {status: OpenApiResponse(ErrorSerializer, description=WHEN[status]) for status in sorted(set(statuses))}


STREAM_EVENT = {
    "type": "object",
    "description": "One `data:` line of an event stream (and one WebSocket message).",
    "required": ["type", "data", "phase"],
    "properties": {
        "type": {"type": "string", "enum": ["stdout", "stderr", "display", "exit", "error"]},
        "data": {
            "oneOf": [{"type": "string"}, {"type": "object", "additionalProperties": True}],
            "description": "Output text, the exit code (for `exit`), or the error; for `display` (a stateful "
                           "session's cell) the MIME bundle, an object: `{\"image/png\": \"<base64>\", "
                           "\"text/plain\": \"...\"}`.",
        },
        "phase": {"type": "string", "enum": ["setup", "code"]},
    },
}

EVENT_STREAM_BODY = {
    # One server-sent event (the stream is a sequence of them; `:` keep-alive
    # comments come between them while a program is silent). The last is `exit`.
    "schema": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string", "enum": ["stdout", "stderr", "display", "exit", "error"]},
            "id": {"type": "string", "description": "Give it as Last-Event-ID to resume after this event."},
            "data": {"type": "string", "description": "A StreamEvent (components/schemas/StreamEvent) as JSON."},
        },
    },
}

RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before trying again."}}


def postprocess(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """What the generator cannot see: event-stream bodies, Retry-After, the StreamEvent object."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if operation.pop(SSE_EXTENSION, False) and "200" in responses:
                responses["200"]["content"] = {"text/event-stream": EVENT_STREAM_BODY}
            for status in ("429", "503"):
                if status in responses:
                    responses[status]["headers"] = RETRY_AFTER
    result.setdefault("components", {}).setdefault("schemas", {})["StreamEvent"] = STREAM_EVENT
    return result


@extend_schema(exclude=True)
class SchemaApi(SpectacularJSONAPIView):
    """GET /openapi.json: the document, public (it says nothing a client does not learn from errors)."""


@extend_schema(exclude=True)
class DocsApi(SpectacularSwaggerView):
    """GET /docs: Swagger UI on the document, with its assets served by this service."""

    url_name = "openapi"
