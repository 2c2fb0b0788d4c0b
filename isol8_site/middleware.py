"""Request body limits, enforced before anything parses the body (413, JSON)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from isol8_site.errors import error_body


class BodySizeLimitMiddleware:
    """2 MiB on /execute*, 16 MiB on /file, 1 MiB elsewhere (api.md "Defaults")."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    @staticmethod
    def limit_for(path: str) -> int:
        if path.startswith("/file"):
            return int(settings.ISOL8_FILE_BODY_MAX)
        if path.startswith("/admin"):
            return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        if path.startswith("/execute"):
            return int(settings.ISOL8_EXECUTE_BODY_MAX)
        return 1024 * 1024

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = self.limit_for(request.path)
        declared = request.META.get("CONTENT_LENGTH")
        too_big = False
        if declared:
            try:
                too_big = int(declared) > limit
            except ValueError:
                return JsonResponse(error_body("bad_request", "Invalid Content-Length"), status=400)
        elif request.method in ("POST", "PUT", "PATCH"):
            # No length (chunked): the ASGI handler has the body already; measure it.
            too_big = len(request.body) > limit
        if too_big:
            return JsonResponse(
                error_body("payload_too_large", f"Request body is larger than {limit} bytes"),
                status=413,
            )
        return self.get_response(request)
