"""Content negotiation: JSON routes answer JSON, stream routes answer event streams.

DRF's default negotiation refuses any ``Accept`` that its renderers do not list,
so ``Accept: text/event-stream`` (what every ``EventSource`` and SSE library
sends) got 406 on the stream routes. Here:

* JSON routes ignore ``Accept`` and always answer JSON, as isol8's server does:
  a browser's ``text/html, */*`` or a client's ``text/plain`` still gets the
  data it asked for rather than a 406 it cannot act on.
* Stream routes answer ``text/event-stream`` whenever ``Accept`` admits it
  (absent, ``*/*``, ``text/*``, ``text/event-stream``, any list with q-values
  where the best-matching range has q > 0) and 406 otherwise. Their errors
  before the stream starts are JSON whatever the ``Accept`` (api.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

EVENT_STREAM = "text/event-stream"


def accept_quality(header: str | None, media_type: str) -> float:
    """The q-value an ``Accept`` header gives ``media_type`` (RFC 9110 section 12.5.1).

    The most specific range that matches decides (``text/event-stream`` over
    ``text/*`` over ``*/*``); no header at all accepts everything; ranges that
    cannot be parsed are skipped, and a header with nothing usable counts as absent.
    """
    if header is None or not header.strip():
        return 1.0
    kind, _, sub = media_type.partition("/")
    best: tuple[int, float] | None = None  # (specificity, q)
    usable = False
    for item in header.split(","):
        value, *params = (p.strip() for p in item.split(";"))
        range_kind, slash, range_sub = value.lower().partition("/")
        if not slash or not range_kind or not range_sub:
            continue
        quality = 1.0
        for param in params:
            name, _, number = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = min(1.0, max(0.0, float(number)))
                except ValueError:
                    quality = 0.0
        usable = True
        if range_kind == "*" and range_sub == "*":
            specificity = 0
        elif range_kind == kind and range_sub == "*":
            specificity = 1
        elif range_kind == kind and range_sub == sub:
            specificity = 2
        else:
            continue
        if best is None or specificity > best[0]:
            best = (specificity, quality)
    if not usable:
        return 1.0
    return best[1] if best is not None else 0.0


class JsonOnlyNegotiation(DefaultContentNegotiation):
    """Always the first (JSON) renderer, whatever ``Accept`` says."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> Any:
        first = next(iter(renderers))
        return first, first.media_type


class EventStreamNegotiation(DefaultContentNegotiation):
    """406 unless ``Accept`` admits ``text/event-stream``; errors still render as JSON."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> Any:
        if accept_quality(request.META.get("HTTP_ACCEPT"), EVENT_STREAM) <= 0:
            raise NotAcceptable(
                "This route answers with an event stream: send Accept: text/event-stream "
                "(or */*, or no Accept header)"
            )
        first = next(iter(renderers))
        return first, first.media_type

