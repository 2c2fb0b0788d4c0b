"""GET /health: is the service able to run code right now?

The web process never talks to Docker; each worker reports in its heartbeat
whether its engine answers, and a worker whose heartbeat is stale counts as gone.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import connection
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


class HealthApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []

    def get(self, request: Request) -> Response:
        checks = health_checks()
        healthy = all(not str(v).startswith(("error", "unknown")) for v in checks.values())
        if healthy:
            return Response({"status": "ok", "version": settings.ISOL8_VERSION})
        return Response({"status": "degraded", "version": settings.ISOL8_VERSION, "checks": checks}, status=503)
