"""The one error shape of the API: {"error": "<sentence>", "code": "<machine_code>"}.

Views and services raise ApiError (or DRF's own exceptions, which the handler
below translates); nothing answers with an HTML page or a bare-text 500.
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


class ApiError(exceptions.APIException):
    """An error with its HTTP status, machine code and human message."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def validation_error(message: str, *, code: str = "validation_error", details: Any = None) -> ApiError:
    return ApiError(400, code, message, details=details)


def not_found(what: str = "Not found") -> ApiError:
    return ApiError(404, "not_found", what)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


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
    if isinstance(exc, ApiError):
        return Response(
            error_body(exc.code, exc.message, exc.details), status=exc.status_code, headers=exc.headers
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
    return _response(500, "internal_error", "The server failed to handle this request; it has been logged.")


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", f"No route for {request.path}"), status=404)


def json_500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        error_body("internal_error", "The server failed to handle this request; it has been logged."),
        status=500,
    )


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("bad_request", "Bad request"), status=400)
