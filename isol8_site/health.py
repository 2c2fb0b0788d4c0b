"""GET /health: is the service able to run code right now?

The web process never talks to Docker; each worker reports in its heartbeat
whether its engine answers, and a worker whose heartbeat is stale counts as gone.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import connection
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from isol8_site import wire


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
        if healthy:
            return Response({"status": "ok", "version": settings.ISOL8_VERSION})
        return Response({"status": "degraded", "version": settings.ISOL8_VERSION, "checks": checks}, status=503)
