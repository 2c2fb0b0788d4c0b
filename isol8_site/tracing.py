"""OpenTelemetry traces across web -> Celery -> worker -> sandbox, exported over OTLP/HTTP; off by default.

Tracing is on when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; the other standard
``OTEL_*`` variables (headers, batch delay, sampler) apply as usual. When it
is off, neither OpenTelemetry's SDK nor its exporter is loaded and ``span()``
returns one shared do-nothing context manager: the hot path pays a function
call (~0.2 µs).

One trace per request: the web's request span, the execution's enqueue, and
the worker's run with its steps (claim, sandbox, run, finish) as children.
The trace context crosses Celery in the task message's headers
(``traceparent``, W3C Trace Context).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_tracer: Any = None  # an opentelemetry Tracer once configured
_provider: Any = None
_NOTHING = contextlib.nullcontext()


def enabled() -> bool:
    return _tracer is not None


def configure(service: str) -> bool:
    """Start exporting this process's spans as ``service`` if an OTLP endpoint is set; True if so."""
    global _tracer, _provider
    if _tracer is not None or not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return _tracer is not None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    _provider = TracerProvider(resource=Resource.create({"service.name": service}))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(_provider)
    _tracer = trace.get_tracer("isol8")
    atexit.register(shutdown)
    logger.info("tracing: %s exports spans over OTLP", service)
    return True


def shutdown() -> None:
    """Send what is still buffered (the worker's shutdown, the web's exit)."""
    if _provider is not None:
        _provider.shutdown()


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one (a shared no-op when tracing is off)."""
    if _tracer is None:
        return _NOTHING
    clean = {f"isol8.{k}": v for k, v in attributes.items() if v is not None}
    return _tracer.start_as_current_span(name, attributes=clean)


def inject() -> dict[str, str]:
    """The current trace context as message headers (empty when tracing is off)."""
    if _tracer is None:
        return {}
    from opentelemetry.propagate import inject as propagate

    carrier: dict[str, str] = {}
    propagate(carrier)
    return carrier


@contextlib.contextmanager
def continued(carrier: dict[str, Any] | None) -> Iterator[None]:
    """Make the trace context that arrived in ``carrier`` (a task's headers) the current one."""
    if _tracer is None or not carrier or "traceparent" not in carrier:
        yield
        return
    from opentelemetry import context
    from opentelemetry.propagate import extract

    token = context.attach(extract({"traceparent": carrier["traceparent"],
                                    "tracestate": carrier.get("tracestate") or ""}))
    try:
        yield
    finally:
        context.detach(token)
