"""HTTP API of executions: run (whole or streamed), history, events, cancel."""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import close_old_connections
from django.db.models import Count
from django.http import HttpResponse, StreamingHttpResponse
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from prometheus_client import CONTENT_TYPE_LATEST
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from executions import events, idempotency, selectors, services, webhooks
from executions.models import FINISHED, Execution, Status
from executions.policy import check_installs_allowed, resolve_egress, resolve_limits, validate_packages
from executions.results import history_record
from executions.serializers import (
    BatchAnswerSerializer,
    BatchSerializer,
    ExecuteSerializer,
    ExecutionDetailSerializer,
    ExecutionResultSerializer,
    HistoryPageSerializer,
    execute_body,
)
from isol8_site import metrics, wire
from isol8_site.authorization import parse_authorization
from isol8_site.config import shown
from isol8_site.errors import Forbidden, exception_handler, not_found, validation_error
from isol8_site.negotiation import EventStreamNegotiation
from isol8_site.openapi import AUTH, BODY, SSE_EXTENSION, errors
from sandbox.spec import ExecutionSpec
from sessions_app.models import Session
from sessions_app.services import SessionAsk, sessions_stop_idle
from tenants.authentication import (
    IsMaster,
    Principal,
    StreamTokenAuthentication,
    authenticate_key,
    principal_of,
)
from tenants.tokens import execution_scope, stream_token_mint

PAGE_SIZE = 50


def sse_response(stream: Any, execution_id: object) -> StreamingHttpResponse:
    # The stream may last minutes and reads the database only from other
    # threads: give this request thread's connection back now, not when the
    # stream ends (500 open streams would hold 500 connections, or the pool).
    close_old_connections()
    response = StreamingHttpResponse(stream, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # proxies must not buffer a live stream
    response["X-Execution-Id"] = str(execution_id)
    return response


def start_execution(
    principal: Principal,
    body: Any,
    *,
    streamed: bool,
    interactive: bool = False,
    batch_id: uuid.UUID | None = None,
    default_callback: str = "",
) -> Execution:
    """Validate an execute body, apply the tenant's policy, record and enqueue it.

    The one way in for POST /execute, /execute/stream, /execute/batch (each
    item, ``batch_id``) and GET /execute/ws (``interactive``: its stdin stays
    open for live input).
    """
    serializer = ExecuteSerializer(data=execute_body(body))
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    options = data.get("options", {})
    limits = resolve_limits(tenant=principal.tenant, request=data["request"], options=options)
    spec = ExecutionSpec.from_request(data["request"], options)
    spec.interactive = interactive
    spec.egress = resolve_egress(tenant=principal.tenant, options=options, network=limits.network)
    spec.log_network = bool(options.get("logNetwork", False))
    # Package names are checked before anything runs (400), then the policy (403).
    spec.install_packages = validate_packages(runtime=spec.runtime, packages=spec.install_packages)
    check_installs_allowed(tenant=principal.tenant, packages=spec.install_packages)
    stateful = data.get("stateful")
    if stateful and not data.get("sessionId"):
        raise validation_error("stateful: needs a sessionId (the interpreter lives in the session)")
    if stateful and settings.SANDBOX.mode != "launcher":
        raise validation_error("stateful: this server runs sandboxes in exec mode; stateful sessions need "
                               "ISOL8_SANDBOX_MODE=launcher")
    callback = data.get("callbackUrl") or default_callback
    if callback:
        webhooks.check_callback_url(tenant=principal.tenant, url=callback)
    return services.execution_start(
        tenant=principal.tenant,
        spec=spec,
        limits=limits,
        streamed=streamed,
        session_id=data.get("sessionId"),
        callback_url=callback,
        batch_id=batch_id,
        # A session keeps its network: what the request named of it is checked against the session.
        session_ask=SessionAsk(
            network=options.get("network"), network_filter=options.get("networkFilter"), stateful=stateful
        ),
    )


def keyed(request: Request, route: str, start: Any) -> idempotency.Outcome | None:
    """Run ``start`` once per Idempotency-Key (None: the request has no key, the caller starts as usual)."""
    key = request.headers.get(idempotency.HEADER)
    if key is None:
        return None
    return idempotency.run_once(tenant=principal_of(request).tenant, key=key, route=route, body=request.data,
                                start=start)


IDEMPOTENCY_PARAMETER = OpenApiParameter(
    idempotency.HEADER, str, OpenApiParameter.HEADER,
    description="Retry-safe submission: the same key and body within a day return the first execution "
    "(header Idempotent-Replayed: true) instead of running the code again; another body is 422.",
)


class ExecuteBase(APIView):
    """Shared by /execute and /execute/stream: the same validation, policy and recording."""

    streamed = False

    def start(self, request: Request) -> Execution:
        return start_execution(principal_of(request), request.data, streamed=self.streamed)


# Everything an execute body can be refused for, before or while it runs.
EXECUTE_ERRORS = errors(*AUTH, *BODY, 409, 422, 503)
SHORTHAND = (
    "The request fields may also be sent at the top level (`{\"runtime\": \"python\", \"code\": ...}`, the form "
    "of isol8's documented curl); both forms at once are 400."
)


class ExecuteApi(ExecuteBase):
    """POST /execute: run and wait for the result."""

    @extend_schema(
        operation_id="execute",
        summary="Run code and wait for its result",
        description="User code that fails, times out, is OOM-killed or floods its output is a 200 with the "
        "result, not an HTTP error. " + SHORTHAND,
        request=ExecuteSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={200: ExecutionResultSerializer, **EXECUTE_ERRORS},
    )
    def post(self, request: Request) -> HttpResponse:
        outcome = keyed(request, "execute", lambda: (self.start(request), None))
        if outcome is not None and outcome.replayed:
            assert outcome.execution is not None
            response = HttpResponse(services.execution_replay_wait(execution=outcome.execution),
                                    content_type="application/json")
            response[idempotency.REPLAYED_HEADER] = "true"
            return response
        execution = outcome.execution if outcome is not None else self.start(request)
        assert execution is not None
        # The worker's JSON goes out as it came (no decode and re-encode); a
        # run that ended in a domain error (setup, install, Docker) raises it.
        body = services.execution_wait(execution=execution)
        return HttpResponse(body, content_type="application/json")


class ExecuteStreamApi(ExecuteBase):
    """POST /execute/stream: run and stream the events over SSE from the first one."""

    streamed = True
    content_negotiation_class = EventStreamNegotiation

    @extend_schema(
        operation_id="execute_stream",
        summary="Run code and stream its output (SSE)",
        description="Answers `text/event-stream` (header `X-Execution-Id`) from the first event; a request "
        "refused before the stream starts gets the JSON error of POST /execute. " + SHORTHAND,
        request=ExecuteSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={200: OpenApiResponse(OpenApiTypes.STR, description="The event stream"),
                   **EXECUTE_ERRORS, **errors(406)},
        extensions={SSE_EXTENSION: True},
    )
    def post(self, request: Request) -> StreamingHttpResponse:
        slot = events.StreamSlot(principal_of(request).tenant.slug)
        slot.acquire()
        try:
            outcome = keyed(request, "execute/stream", lambda: (self.start(request), None))
            execution = outcome.execution if outcome is not None else self.start(request)
            assert execution is not None
        except BaseException:
            async_to_sync(slot.release)()
            raise
        if outcome is not None and outcome.replayed:
            # The first request's stream, from its first event (live if it still runs).
            replay = events.stream_for(execution, after=0, on_tick=slot.refresh)
            response = sse_response(events.held(replay, slot), execution.pk)
            response[idempotency.REPLAYED_HEADER] = "true"
            return response
        stream = events.stream_events(execution.pk, after=0, fresh=True, on_tick=slot.refresh)
        return sse_response(events.held(stream, slot), execution.pk)


class ExecuteBatchApi(APIView):
    """POST /execute/batch: start many executions at once; one execution id (or error) per request."""

    @extend_schema(
        operation_id="execute_batch",
        summary="Start up to ISOL8_BATCH_MAX executions; follow them with GET /executions?batch=",
        description="Each request is checked and started on its own, as POST /execute would (policy, quotas, "
        "callbacks): an item that is refused gets its error and status in `items` and nothing is started for "
        "it; the others run. The answer comes at once; results arrive by callback or the history.",
        request=BatchSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={200: BatchAnswerSerializer, **errors(*AUTH, *BODY, 422, 503)},
    )
    def post(self, request: Request) -> Response:
        principal = principal_of(request)
        outcome = keyed(request, "execute/batch", lambda: (None, self.submit(principal, request.data)))
        if outcome is None:
            return Response(self.submit(principal, request.data))
        headers = {idempotency.REPLAYED_HEADER: "true"} if outcome.replayed else None
        return Response(outcome.answer, headers=headers)

    def submit(self, principal: Principal, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise validation_error("The body must be a JSON object")
        form = BatchSerializer(data=body)
        form.is_valid(raise_exception=True)
        batch_id = uuid.uuid4()
        items: list[dict[str, Any]] = []
        for item in form.validated_data["requests"]:
            try:
                execution = start_execution(principal, item, streamed=False, batch_id=batch_id,
                                            default_callback=form.validated_data.get("callbackUrl", ""))
            except Exception as exc:  # noqa: BLE001 - each item's refusal is its own answer, in the error shape
                refused = exception_handler(exc, {"view": self})
                assert refused is not None
                items.append({**refused.data, "status": refused.status_code})
            else:
                items.append({"executionId": str(execution.pk)})
        started = sum(1 for item in items if "executionId" in item)
        return {"batchId": str(batch_id), "items": items, "started": started, "refused": len(items) - started}


@extend_schema_field(OpenApiTypes.STR)
class AnyUuidField(serializers.UUIDField):
    """A UUID in any of its spellings (hyphens or not, braces, urn:uuid:): a string in the document."""


class ExecutionListApi(APIView):
    """GET /executions: this tenant's history, newest first, with filters."""

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Status.choices, required=False, allow_blank=True)
        # An empty parameter filters nothing (as if it were absent).
        runtime = serializers.CharField(required=False, allow_blank=True)
        sessionId = serializers.CharField(required=False, allow_blank=True)
        since = serializers.CharField(required=False, allow_blank=True, help_text="ISO-8601 date-time")
        until = serializers.CharField(required=False, allow_blank=True, help_text="ISO-8601 date-time")
        before = serializers.CharField(required=False, allow_blank=True,
                                       help_text="Cursor: the last id of the previous page (see `next`)")
        batch = AnyUuidField(required=False, help_text="Only the executions of this batch (a batchId)")

    @extend_schema(
        operation_id="executions_list",
        summary="This tenant's history, newest first",
        parameters=[FilterSerializer],
        responses={200: HistoryPageSerializer, **errors(*AUTH, 400)},
    )
    def get(self, request: Request) -> Response:
        principal = principal_of(request)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        f = filters.validated_data
        since = _parse_time(f.get("since"), "since")
        until = _parse_time(f.get("until"), "until")
        page = selectors.execution_list(
            tenant=principal.tenant,
            status=f.get("status"),
            runtime=f.get("runtime"),
            session_id=f.get("sessionId"),
            since=since,
            until=until,
            before=f.get("before"),
            batch_id=f.get("batch"),
            limit=PAGE_SIZE + 1,
        )
        rows = list(page)
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        next_url = None
        if more:
            params = {k: v for k, v in request.query_params.items() if k != "before"}
            params["before"] = str(rows[-1].pk)
            next_url = request.build_absolute_uri(f"{request.path}?{urlencode(params)}")
        return Response(
            {"results": [history_record(e) for e in rows], "next": next_url}
        )


def _parse_time(value: str | None, name: str) -> Any:
    if not value:
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:  # well formed but not a real date (month 13)
        parsed = None
    if parsed is None:
        raise validation_error(f"{name}: not an ISO-8601 date-time: {shown(value)}")
    return parsed


class ExecutionDetailApi(APIView):
    """GET /executions/{id}: one of this tenant's executions."""

    @extend_schema(
        operation_id="execution_get",
        summary="One execution of this tenant",
        responses={200: ExecutionDetailSerializer, **errors(*AUTH, 404)},
    )
    def get(self, request: Request, execution_id: str) -> Response:
        principal = principal_of(request)
        execution = selectors.execution_get(tenant=principal.tenant, execution_id=execution_id)
        if execution is None:
            raise not_found("Execution not found")
        return Response(history_record(execution, detail=True))


class ExecutionEventsApi(APIView):
    """GET /executions/{id}/events: the event stream, resumable with Last-Event-ID.

    Besides the API key, a stream token for this execution in ``?token=``
    authenticates it (browsers' EventSource cannot send headers).
    """

    content_negotiation_class = EventStreamNegotiation
    authentication_classes = [StreamTokenAuthentication]

    @staticmethod
    def token_scope(execution_id: str) -> str:
        return execution_scope(execution_id)

    @extend_schema(
        operation_id="execution_events",
        summary="The execution's event stream, resumable",
        description="Replays from the first event, or after `Last-Event-ID` (header) / `lastEventId`; ends "
        "right after `exit`. A browser authenticates with `?token=` from POST /executions/{id}/token.",
        parameters=[
            OpenApiParameter("token", str, description="A stream token for this execution (instead of a key)"),
            OpenApiParameter("lastEventId", str, description="Resume after this event id"),
            OpenApiParameter("Last-Event-ID", str, OpenApiParameter.HEADER, description="Resume after this event id"),
        ],
        responses={200: OpenApiResponse(OpenApiTypes.STR, description="The event stream"),
                   **errors(*AUTH, 400, 404, 406)},
        extensions={SSE_EXTENSION: True},
    )
    def get(self, request: Request, execution_id: str) -> StreamingHttpResponse:
        principal = principal_of(request)
        execution = selectors.execution_get(tenant=principal.tenant, execution_id=execution_id)
        if execution is None:
            raise not_found("Execution not found")
        last = request.META.get("HTTP_LAST_EVENT_ID") or request.query_params.get("lastEventId")
        slot = events.StreamSlot(principal.tenant.slug)
        slot.acquire()
        stream = events.stream_for(execution, after=events.parse_last_event_id(last), on_tick=slot.refresh)
        return sse_response(events.held(stream, slot), execution.pk)


class ExecutionTokenApi(APIView):
    """POST /executions/{id}/token: a short-lived token to read this execution's stream from a browser."""

    @extend_schema(
        operation_id="execution_token",
        summary="A short-lived token to read the stream from a browser",
        request=None,
        responses={
            200: inline_serializer("StreamToken", {
                "token": serializers.CharField(),
                "expiresAt": serializers.DateTimeField(),
                "eventsUrl": serializers.CharField(help_text="GET it with EventSource: no header needed"),
            }),
            **errors(*AUTH, 404),
        },
    )
    def post(self, request: Request, execution_id: str) -> Response:
        principal = principal_of(request)
        execution = selectors.execution_get(tenant=principal.tenant, execution_id=execution_id)
        if execution is None:
            raise not_found("Execution not found")
        minted = stream_token_mint(
            tenant=principal.tenant, api_key=principal.api_key, scope=execution_scope(execution.pk)
        )
        query = urlencode({"token": minted.token})
        return Response({
            "token": minted.token,
            "expiresAt": minted.expires_at.isoformat().replace("+00:00", "Z"),
            "eventsUrl": f"/executions/{execution.pk}/events?{query}",
        })


class ExecutionCancelApi(APIView):
    """POST /executions/{id}/cancel: kill a queued or running execution."""

    @extend_schema(
        operation_id="execution_cancel",
        summary="Kill a queued or running execution",
        description="`ok` is false when it had already finished (`status` says how).",
        request=None,
        responses={
            200: inline_serializer("CancelAnswer", {
                "ok": serializers.BooleanField(),
                "status": serializers.ChoiceField(choices=Status.choices),
                "executionId": serializers.UUIDField(),
            }),
            **errors(*AUTH, 404, 503),
        },
    )
    def post(self, request: Request, execution_id: str) -> Response:
        principal = principal_of(request)
        execution = selectors.execution_get(tenant=principal.tenant, execution_id=execution_id)
        if execution is None:
            raise not_found("Execution not found")
        if execution.status in FINISHED:
            return Response({"ok": False, "status": execution.status, "executionId": str(execution.pk)})
        execution = services.execution_cancel(execution=execution)
        return Response({"ok": True, "status": execution.status, "executionId": str(execution.pk)})


class CleanupApi(APIView):
    """POST /cleanup (master key): stop idle sessions, remove leaked containers. Never images."""

    permission_classes = [IsMaster]

    @extend_schema(
        operation_id="cleanup",
        summary="Stop idle sessions, remove leaked sandbox containers (master key)",
        request=None,
        responses={
            200: inline_serializer("CleanupAnswer", {
                "ok": serializers.BooleanField(),
                "sessions": inline_serializer("CleanupSessions", {"removed": serializers.IntegerField()}),
                "containers": inline_serializer("CleanupContainers", {
                    "removed": serializers.IntegerField(),
                    "workers": serializers.IntegerField(help_text="Workers asked"),
                    "unanswered": serializers.IntegerField(help_text="Workers that did not answer in time"),
                }),
            }),
            **errors(*AUTH, 503),
        },
    )
    def post(self, request: Request) -> Response:
        sessions = sessions_stop_idle()
        containers = services.containers_cleanup()
        return Response({"ok": True, "sessions": {"removed": sessions}, "containers": containers})


class MetricsApi(APIView):
    """GET /metrics: Prometheus text exposition (the master key, or ISOL8_METRICS_TOKEN as a bearer token)."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []

    @extend_schema(
        operation_id="metrics",
        summary="Prometheus metrics (master key or ISOL8_METRICS_TOKEN)",
        responses={
            (200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description="Prometheus text format 0.0.4"),
            **errors(*AUTH),
        },
    )
    def get(self, request: Request) -> HttpResponse:
        token = parse_authorization(request.META.get("HTTP_AUTHORIZATION", ""))
        expected = settings.ISOL8_METRICS_TOKEN
        if not (expected and token and hmac.compare_digest(token.encode(), expected.encode())):
            principal = authenticate_key(token, client=request.META.get("REMOTE_ADDR"))
            if not principal.is_master:
                raise Forbidden("This route needs the master key or the metrics token")
        return HttpResponse(metrics.exposition(metric_levels), content_type=CONTENT_TYPE_LATEST)


def metric_levels() -> list[tuple[str, str, list[str], list[tuple[list[str], float]]]]:
    """The levels of the cluster, read at scrape time: workers, pools, sessions, open streams."""
    beats = wire.worker_beats()
    alive = wire.alive_hosts(beats)
    now = time.time()
    pool: list[tuple[list[str], float]] = []
    found: list[tuple[list[str], float]] = []
    for host, beat in beats.items():
        for runtime, counts in (beat.get("runtimes") or {}).items():
            for state in ("warm", "idle"):
                pool.append(([host, runtime, state], float(counts.get(state, 0))))
            for how in ("idleHits", "warmHits", "misses"):
                found.append(([host, runtime, how], float(counts.get(how, 0))))
    sessions = Session.objects.live().values_list("worker_host").annotate(n=Count("id"))
    return [
        ("isol8_worker_up", "1 while the host's worker heartbeat is fresh.", ["host"],
         [([host], 1.0 if host in alive else 0.0) for host in beats]),
        ("isol8_worker_heartbeat_age_seconds", "Seconds since the host's last heartbeat.", ["host"],
         [([host], max(0.0, now - float(beat.get("at", now)))) for host, beat in beats.items()]),
        ("isol8_docker_up", "1 when the host's Docker engine answered its last heartbeat.", ["host"],
         [([host], 1.0 if beat.get("docker") else 0.0) for host, beat in beats.items()]),
        ("isol8_pool_sandboxes", "Sandboxes ready on a host: warm (any tenant) or idle (kept for one).",
         ["host", "runtime", "state"], pool),
        ("isol8_pool_acquires", "How the host's runs got their sandbox since its worker started (a counter).",
         ["host", "runtime", "found"], found),
        ("isol8_live_sessions", "Live sessions, by the host that holds their container.", ["host"],
         [([host or "unplaced"], float(n)) for host, n in sessions]),
        ("isol8_open_streams", "Open SSE and WebSocket streams, by tenant.", ["tenant"], events.open_streams()),
    ]
