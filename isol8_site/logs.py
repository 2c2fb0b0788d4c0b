"""Structured logs: one JSON line per request (``isol8.request``) and per execution step (``isol8.execution``).

Each request gets an id: the client's ``X-Request-Id`` when it is a short token
(letters, digits, ``._-``, at most 64), else a new one; it is echoed in the
response's ``X-Request-Id`` and put on every line logged while the request is
handled, the execution steps the web logs included (received, queued; the
worker logs started and finished with the same execution id). Lines name
ids, tenants, runtimes, statuses and durations, never keys, code, stdin,
secrets or output. Other loggers keep the plain text format.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

from isol8_site import tracing

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
STEPS = ("received", "queued", "started", "finished")

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("isol8_request_id", default="")
request_logger = logging.getLogger("isol8.request")
execution_logger = logging.getLogger("isol8.execution")


def new_request_id(offered: str | None) -> str:
    """The client's id when it is a plain short token, else a fresh one."""
    return offered if offered and REQUEST_ID.match(offered) else uuid.uuid4().hex


class RequestIdMiddleware:
    """Gives each request its id (echoed back) and logs one line when its answer starts."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        rid = new_request_id(request.headers.get(REQUEST_ID_HEADER))
        token = request_id.set(rid)
        started = time.perf_counter()
        try:
            # The path names ids; the span's name stays one per method (low cardinality).
            with tracing.span(f"HTTP {request.method}", path=request.path, request_id=rid) as current:
                response = self.get_response(request)
                if current is not None:
                    current.set_attribute("http.response.status_code", response.status_code)
        finally:
            request_id.reset(token)
        response[REQUEST_ID_HEADER] = rid
        principal = getattr(request, "user", None)
        tenant = getattr(getattr(principal, "tenant", None), "slug", None)
        request_logger.info(
            "request",
            extra={
                "request_id": rid,
                "method": request.method,
                "path": request.path,  # never the query string: a stream token travels there
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "tenant": tenant,
                "client": request.META.get("REMOTE_ADDR"),
            },
        )
        return response


def execution_step(step: str, *, execution_id: object, tenant: str, runtime: str, **fields: Any) -> None:
    """One line for one step of an execution's life (received, queued, started, finished)."""
    assert step in STEPS, step
    execution_logger.info(
        step,
        extra={
            "step": step, "execution_id": str(execution_id), "tenant": tenant, "runtime": runtime,
            "request_id": request_id.get() or None, **fields,
        },
    )
