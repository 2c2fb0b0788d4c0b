"""Request body limits, enforced before anything parses the body (413, JSON)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from isol8_site.errors import error_body


def limit_for(path: str) -> int:
    """2 MiB on /execute*, 16 MiB on /file, 1 MiB elsewhere (api.md "Defaults")."""
    if path.startswith("/file"):
        return int(settings.ISOL8_FILE_BODY_MAX)
    if path.startswith("/admin"):
        return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    if path.startswith("/execute"):
        return int(settings.ISOL8_EXECUTE_BODY_MAX)
    return 1024 * 1024


def too_large(request: HttpRequest) -> HttpResponse | None:
    """The 413 (or 400) answer for a request whose body is over its route's limit."""
    limit = limit_for(request.path)
    declared = request.META.get("CONTENT_LENGTH")
    if declared:
        try:
            over = int(declared) > limit
        except ValueError:
            return JsonResponse(error_body("bad_request", "Invalid Content-Length"), status=400)
    elif request.method in ("POST", "PUT", "PATCH"):
        # No length (chunked): the ASGI handler has the body already; measure it.
        over = len(request.body) > limit
    else:
        over = False
    if over:
        return JsonResponse(
            error_body("payload_too_large", f"Request body is larger than {limit} bytes"), status=413
        )
    return None


class BodySizeLimitMiddleware:
    """Sync and async capable, so under ASGI it adds no thread hop to every request."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self.__acall__(request)
        return too_large(request) or self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        refusal = too_large(request)
        if refusal is not None:
            return refusal
        response: HttpResponse = await self.get_response(request)
        return response
