"""Errors: the service's domain errors, and the one place that turns them (and DRF's) into HTTP.

Services, selectors and authentication raise the domain errors below: what
went wrong, in a sentence a person can act on, and a machine code. They know
nothing of HTTP. Only this module maps codes to status codes and headers,
and every answer has the one shape ``{"error": "<sentence>", "code": "<code>"}``
(optionally ``details``): never an HTML page, a bare-text 500 or a repr.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import kombu.exceptions
import redis
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class DomainError(Exception):
    """A request the service's rules refuse; ``code`` says which rule, the message what to do."""

    code = "error"

    def __init__(
        self, message: str, *, code: str | None = None, details: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details
        self.retry_after = retry_after


class ValidationFailed(DomainError):
    """The request is malformed (codes: validation_error, unsupported_runtime, path_outside_sandbox, ...)."""

    code = "validation_error"


class Unauthorized(DomainError):
    code = "unauthorized"


class Forbidden(DomainError):
    code = "forbidden"


class PolicyDenied(DomainError):
    """The tenant's policy does not allow what the request asks for."""

    code = "policy_denied"


class NotFound(DomainError):
    code = "not_found"


class SessionBusy(DomainError):
    code = "session_busy"


class SessionDead(DomainError):
    code = "session_dead"


class SessionNotStarted(DomainError):
    code = "session_not_started"


class PayloadTooLarge(DomainError):
    code = "payload_too_large"


class SetupFailed(DomainError):
    code = "setup_failed"


class InstallFailed(DomainError):
    code = "install_failed"


class IdempotencyMismatch(DomainError):
    code = "idempotency_mismatch"


class QuotaExceeded(DomainError):
    code = "quota_exceeded"


class RateLimited(DomainError):
    code = "rate_limited"


class Unavailable(DomainError):
    """No capacity right now (queue full, no worker, Docker or Redis down): nothing ran; try again."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: float = 5, **kwargs: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)


class SandboxFull(DomainError):
    code = "sandbox_full"


INTERNAL_MESSAGE = "The server failed to handle this request; it has been logged."


def rebuilt(code: str, message: str) -> DomainError:
    """A domain error that crossed Redis as its code and message (a worker's answer).

    A server-side failure keeps only its code: its text may name internals.
    """
    if code not in STATUS_BY_CODE or http_status(code) == 500:
        return DomainError(INTERNAL_MESSAGE, code="internal_error")
    if code == Unavailable.code:
        return Unavailable(message)  # keeps its Retry-After
    return DomainError(message, code=code)


STATUS_BY_CODE = {
    "bad_request": 400,
    "invalid_json": 400,
    "validation_error": 400,
    "unsupported_runtime": 400,
    "path_outside_sandbox": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "policy_denied": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "not_acceptable": 406,
    "request_timeout": 408,
    "session_busy": 409,
    "session_dead": 409,
    "session_not_started": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "setup_failed": 422,
    "install_failed": 422,
    "idempotency_mismatch": 422,
    "quota_exceeded": 429,
    "rate_limited": 429,
    "internal_error": 500,
    "unavailable": 503,
    "sandbox_full": 507,
}


def http_status(code: str) -> int:
    return STATUS_BY_CODE.get(code, 500)


def http_headers(error: DomainError) -> dict[str, str]:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if error.code == "unauthorized":
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def validation_error(message: str, *, code: str = "validation_error", details: Any = None) -> ValidationFailed:
    return ValidationFailed(message, code=code, details=details)


def not_found(what: str = "Not found") -> NotFound:
    return NotFound(what)


def unauthorized(message: str) -> Unauthorized:
    return Unauthorized(message)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message, "code": code}
    if details is not None:
        body["details"] = details
    return body


def _first_message(detail: Any, path: str = "") -> str:
    """Turn DRF's nested validation detail into one sentence naming the field."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{path}.{key}" if path and key != "non_field_errors" else (path or str(key))
            if key == "non_field_errors":
                name = path
            return _first_message(value, name)
    if isinstance(detail, list) and detail:
        return _first_message(detail[0], path)
    text = str(detail)
    return f"{path}: {text}" if path else text


def _detail_text(detail: Any) -> str:
    """The sentence inside a DRF exception's detail (a string, a list or a dict of them)."""
    if isinstance(detail, dict) and "detail" in detail:
        detail = detail["detail"]
    return _first_message(detail)


def _response(status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status=status_code, headers=headers)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every exception a view raises becomes the one error shape, with a sentence.

    DRF's own exceptions are mapped one by one; nothing falls through to a
    ``str()`` of a detail dict (which would send a Python repr to a client).
    Anything that is not an APIException is a bug: logged, answered as 500
    without its text.
    """
    if isinstance(exc, DomainError):
        return Response(
            error_body(exc.code, exc.message, exc.details), status=http_status(exc.code), headers=http_headers(exc)
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if isinstance(exc, exceptions.ValidationError):
        message = _first_message(exc.detail)
        return Response(
            error_body("validation_error", message, exc.detail), status=status.HTTP_400_BAD_REQUEST
        )
    if isinstance(exc, exceptions.ParseError):
        reason = _detail_text(exc.detail).removeprefix("JSON parse error - ")
        return _response(400, "invalid_json", f"Request body is not valid JSON: {reason}")
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return _response(415, "unsupported_media_type", "Send the body as JSON with Content-Type: application/json")
    if isinstance(exc, exceptions.MethodNotAllowed):
        method = context["request"].method if context.get("request") is not None else "This method"
        return _response(405, "method_not_allowed", f"Method {method} is not allowed on this route")
    if isinstance(exc, exceptions.NotAcceptable):
        return _response(406, "not_acceptable", _detail_text(exc.detail))
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return _response(401, "unauthorized", "Missing Authorization header", {"WWW-Authenticate": "Bearer"})
    if isinstance(exc, exceptions.PermissionDenied):
        return _response(403, "forbidden", _detail_text(exc.detail))
    if isinstance(exc, exceptions.NotFound):
        return _response(404, "not_found", "Not found")
    if isinstance(exc, exceptions.Throttled):
        wait = max(1, math.ceil(getattr(exc, "wait", None) or 1))
        return _response(
            429, "rate_limited", f"Too many requests; try again in {wait} s", {"Retry-After": str(wait)}
        )
    if isinstance(exc, exceptions.APIException):
        code = exc.default_code if isinstance(exc.default_code, str) else "error"
        return _response(exc.status_code, code, _detail_text(exc.detail))
    if isinstance(exc, (redis.RedisError, kombu.exceptions.OperationalError)):
        # Redis (quotas, the queue) is down or restarting: nothing was started.
        logger.warning("Redis unreachable in %s: %s", context.get("view"), exc)
        return _response(
            503, "unavailable", "The service's queue is unreachable right now; try again shortly", {"Retry-After": "5"}
        )
    logger.exception("unhandled error in %s", context.get("view"))
    return _response(500, "internal_error", INTERNAL_MESSAGE)


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", f"No route for {request.path}"), status=404)


def json_500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        error_body("internal_error", INTERNAL_MESSAGE),
        status=500,
    )


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("bad_request", "Bad request"), status=400)
