"""GET /health: is the service able to run code right now?

The web process never talks to Docker; each worker reports in its heartbeat
whether its engine answers, and a worker whose heartbeat is stale counts as gone.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from django.conf import settings
from django.db import connection
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from isol8_site import wire
from isol8_site.authorization import parse_authorization


def host_states(beats: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each worker host as its heartbeat tells it (GET /health with the master key lists them)."""
    now = time.time()
    alive = wire.alive_hosts(beats)
    hosts = {}
    for name, beat in sorted(beats.items()):
        state = "stopped" if beat.get("stopped") else "alive" if name in alive else "silent"
        hosts[name] = {
            "state": state,
            "docker": "ok" if beat.get("docker") else "down",
            "draining": bool(beat.get("draining")),
            "sandboxes": int(beat.get("warm", 0)) + int(beat.get("idle", 0)),
            "capacity": beat.get("capacity"),
            "lastBeatSecondsAgo": round(now - float(beat["at"]), 1),
        }
    return hosts


def health_checks() -> dict[str, Any]:
    checks: dict[str, Any] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported in the health answer
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        beats = wire.worker_beats()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported in the health answer
        checks["redis"] = f"error: {exc.__class__.__name__}"
        beats = {}
    alive = [beats[host] for host in wire.alive_hosts(beats)]
    checks["workers"] = len(alive) if alive else "error: no worker alive"
    if not alive:
        checks["docker"] = "unknown (no worker alive)"
    elif any(beat.get("docker") for beat in alive):
        checks["docker"] = "ok"
    else:
        checks["docker"] = "error: no worker reaches its Docker engine"
    return checks


HEALTH = inline_serializer("Health", {
    "status": serializers.ChoiceField(choices=["ok", "degraded"]),
    "version": serializers.CharField(),
    "checks": serializers.DictField(required=False, help_text="database, redis, workers, docker: ok or why not"),
    "hosts": serializers.DictField(
        required=False,
        help_text="With the master key only: each worker host's state (alive, silent, stopped), docker "
        "(ok, down), draining, sandboxes, capacity, lastBeatSecondsAgo",
    ),
})


class HealthApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []

    @extend_schema(
        operation_id="health",
        summary="Can the service run code right now?",
        auth=[],
        responses={
            200: HEALTH,
            (503, "application/json"): OpenApiResponse(HEALTH, description="Degraded: `checks` says what is down"),
        },
    )
    def get(self, request: Request) -> Response:
        checks = health_checks()
        healthy = all(not str(v).startswith(("error", "unknown")) for v in checks.values())
        body: dict[str, Any] = {"status": "ok" if healthy else "degraded", "version": settings.ISOL8_VERSION}
        if not healthy:
            body["checks"] = checks
        if presents_master_key(request):
            try:
                body["hosts"] = host_states(wire.worker_beats())
            except Exception:  # noqa: BLE001 - Redis away: checks say so
                body["hosts"] = {}
        return Response(body, status=200 if healthy else 503)


def presents_master_key(request: Request) -> bool:
    """The operator's view: the master key in Authorization (this route authenticates nobody else)."""
    master = settings.ISOL8_API_KEY
    given = parse_authorization(request.META.get("HTTP_AUTHORIZATION", ""))
    return bool(master and given) and hmac.compare_digest(given.encode(), master.encode())
