"""Where work goes when there are several worker hosts (each one Docker engine and its worker).

A new session is placed on the host with the most free capacity: of the
hosts whose heartbeat is fresh, whose engine answers and that an operator has
not set draining (``WorkerHost.draining`` in the admin), the one with the
largest ``capacity - (live sessions + pool sandboxes)``. A host at its
capacity takes no new session; when none can, the request is 503 with
Retry-After. Its later runs and file operations go to that host's queue.

One-shot runs share one queue; a host stops consuming it while its engine is
down or it is draining (worker/daemon.py), so they reach the others.

Costs per new session: one Redis HGETALL (the heartbeats) and two small
queries (live sessions per host, draining hosts).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count

from isol8_site import wire
from isol8_site.errors import Unavailable
from sessions_app.models import Session, WorkerHost


@dataclass(frozen=True)
class HostLoad:
    """One worker host as placement (and /health, the admin) sees it."""

    name: str
    alive: bool  # its heartbeat is fresh
    docker: bool  # its engine answered at the last heartbeat
    draining: bool
    capacity: int  # live sandboxes it may hold (its worker's ISOL8_HOST_CAPACITY)
    sessions: int  # live sessions placed there (the database's count)
    sandboxes: int  # warm and idle pool sandboxes (its heartbeat)

    @property
    def free(self) -> int:
        return self.capacity - self.sessions - self.sandboxes

    @property
    def accepting(self) -> bool:
        return self.alive and self.docker and not self.draining and self.free > 0


def host_loads() -> list[HostLoad]:
    """Every host that has a heartbeat or a live session, by name."""
    beats = wire.worker_beats()
    alive = wire.alive_hosts(beats)
    sessions = dict(
        Session.objects.live().exclude(worker_host="").values_list("worker_host").annotate(n=Count("id"))
    )
    draining = set(WorkerHost.objects.filter(draining=True).values_list("name", flat=True))
    loads = []
    for name in sorted(set(beats) | set(sessions)):
        beat = beats.get(name, {})
        loads.append(HostLoad(
            name=name,
            alive=name in alive,
            docker=bool(beat.get("docker")),
            draining=name in draining,
            capacity=int(beat.get("capacity", 0)),
            sessions=int(sessions.get(name, 0)),
            sandboxes=int(beat.get("warm", 0)) + int(beat.get("idle", 0)),
        ))
    return loads


def choose_host() -> str:
    """The host for a new session ("" while no worker is alive: the first to start takes it).

    Raises Unavailable when workers are alive but none may take one.
    """
    loads = host_loads()
    if not any(load.alive for load in loads):
        return ""
    candidates = [load for load in loads if load.accepting]
    if not candidates:
        raise Unavailable(
            "No worker host can take a new session now (all are full, draining or without Docker); "
            "try again shortly", retry_after=10,
        )
    return max(candidates, key=lambda load: load.free).name  # ties: the first by name
