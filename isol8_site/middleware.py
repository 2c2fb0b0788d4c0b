"""Request body limits, enforced before anything parses the body (413, JSON)."""

from __future__ import annotations

from collections.abc import Callable

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
    """Refuses oversized bodies before any view parses them.

    A sync middleware like Django's own: isol8_site/asgi.py runs the whole
    chain in one thread hop per request.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return too_large(request) or self.get_response(request)
