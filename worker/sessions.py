"""The sandboxes of this host's sessions: found, re-attached or made; their file operations; their CPU.

A session's container lives on the host whose worker made it; everything
touching it (its runs, file operations, removal) is sent to that host's queue
(isol8_site/dispatch.py). This module keeps the host's map from session to
Sandbox, which a restarted worker rebuilds by re-attaching to the containers
its sessions' rows name.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from isol8_site import wire
from sandbox import containers
from sandbox.containers import LABEL_SESSION, LABEL_TENANT, Sandbox
from sandbox.errors import SandboxError
from sandbox.images import science_image
from sandbox.run import prepare_sandbox
from sandbox.spec import Limits
from sessions_app import services as session_services
from sessions_app.models import Session
from tenants import quotas

logger = logging.getLogger(__name__)

# The launcher's file-operation refusals a client may see, as they are; any
# other refusal is logged and answered as internal_error.
CLIENT_FILE_ERRORS = frozenset({"path_outside_sandbox", "validation_error", "not_found", "payload_too_large",
                                "sandbox_full"})
FILE_OP_FAILED = "The file operation failed; it has been logged."


class SessionDeletedError(SandboxError):
    """The session was deleted (DELETE, prune, admin) before its sandbox was ready."""


@dataclass
class SessionMeter:
    """CPU a session's container used between its runs (background processes), to charge it."""

    cpu_ns: int | None = None  # the container's CPU time at the last reading
    run_seconds: float = 0.0  # wall time of its runs since then (they are charged on their own)


class SessionBoxes:
    """This host's session sandboxes (session pk → Sandbox) and their CPU meters."""

    def __init__(self, *, host: str) -> None:
        self.host = host
        self._boxes: dict[int, Sandbox] = {}
        self._meters: dict[int, SessionMeter] = {}
        self._lock = threading.Lock()

    def box_for(self, session_pk: int, *, tenant: str = "", create: bool, image: str | None = None) -> Sandbox:
        """The session's sandbox on this host: known, re-attached, or (first run, ``create``) new.

        A known sandbox is answered from memory: the session row is only read
        when the container has to be found or made (``tenant`` is needed then).
        Raises SandboxError (SessionDeletedError when a DELETE won the race
        with the container's start).
        """
        with self._lock:
            box = self._boxes.get(session_pk)
        if box is not None and not box.broken:
            return box
        session = Session.objects.select_related("tenant").get(pk=session_pk)
        limits = Limits.from_json(session.limits)
        if session.container_id:
            box = containers.adopt_sandbox(container_id=session.container_id, runtime=session.runtime, limits=limits)
            if box is None:
                session_services.session_mark_dead(session_pk=session.pk, reason="its container is gone")
                raise SandboxError("the session's container is gone; delete the session and start a new one")
            box.tenant = session.tenant.slug
            # Idempotent: keeps the fork-server setting after a worker restart, and a
            # stateful session's interpreter (the launcher kept it, with its state).
            prepare_sandbox(box, stateful=session.stateful)
        elif create:
            if image is None and session.stateful and session.runtime == "python":
                image = science_image()  # plots and DataFrames, when that image is built
            box = containers.create_sandbox(
                runtime=session.runtime,
                limits=limits,
                labels={LABEL_SESSION: str(session.pk), LABEL_TENANT: tenant},
                image=image,
            )
            box.tenant = tenant
            if not session_services.session_attach_container(session_pk=session.pk, container_id=box.container_id):
                box.destroy()
                raise SessionDeletedError("the session was deleted while its sandbox was starting")
            prepare_sandbox(box, stateful=session.stateful)
        else:
            raise SandboxError("the session has no sandbox yet")
        with self._lock:
            self._boxes[session.pk] = box
        return box

    def after_run(self, session_pk: int, box: Sandbox, *, seconds: float) -> None:
        """Count a run's wall time against the meter; keep the session usable after a bad run, or end it.

        A timeout, OOM or pids exhaustion: what is left of the run is killed
        and the session carries on. A broken stream or a dead container ends it.
        """
        with self._lock:
            self._meters.setdefault(session_pk, SessionMeter()).run_seconds += seconds
        if not box.broken:
            return
        try:
            if containers.container_running(box.container_id) and box.request({"op": "kill"}).get("clean"):
                box.broken = False
                return
        except SandboxError:
            pass
        self.forget(session_pk, destroy=True)
        session_services.session_mark_dead(session_pk=session_pk, reason="its sandbox failed")

    def forget(self, session_pk: int, *, destroy: bool) -> None:
        with self._lock:
            box = self._boxes.pop(session_pk, None)
            self._meters.pop(session_pk, None)
        if box is not None and destroy:
            box.destroy()

    def end_stopped(self) -> int:
        """Sessions of this host whose container no longer runs (the engine restarted) end as dead; how many.

        Their processes and memory are gone with the old engine: the next call
        says so instead of running in a container that lost its state, and the
        orphan sweep removes the containers.
        """
        live = Session.objects.live().filter(worker_host=self.host).exclude(container_id="")
        ended = 0
        for session_pk, container_id in live.values_list("pk", "container_id"):
            if containers.container_running(container_id):
                continue
            self.forget(session_pk, destroy=False)
            session_services.session_mark_dead(
                session_pk=session_pk, reason="its container stopped when its Docker engine went away"
            )
            ended += 1
        return ended

    def drop(self, *, session_pk: int, container_id: str) -> None:
        """Remove a stopped session's container (DELETE, prune, admin terminate), with its uid and egress lane."""
        with self._lock:
            box = self._boxes.get(session_pk)
        if box is not None and box.container_id == container_id:
            self.forget(session_pk, destroy=True)
            return
        self.forget(session_pk, destroy=False)
        containers.remove_container(container_id)

    def container_ids(self, *, mark_missing_dead: bool = False) -> set[str]:
        """Containers of this host's live sessions (kept by the orphan sweep).

        With ``mark_missing_dead`` (worker start), sessions whose container
        vanished are marked dead, so their next call gets a clear error.
        """
        live = Session.objects.live().filter(worker_host=self.host).exclude(container_id="")
        wanted = dict(live.values_list("container_id", "pk"))
        if mark_missing_dead and wanted:
            present = {c.id for c in containers.list_managed(host=self.host)}
            for container_id, session_pk in wanted.items():
                if container_id not in present:
                    session_services.session_mark_dead(
                        session_pk=session_pk, reason="its container is gone (worker or Docker restarted)"
                    )
        return set(wanted)

    def meter(self) -> None:
        """Charge each session's CPU time outside its runs to its tenant's month.

        Runs are charged their wall time when they finish; a process a session
        left running in the background uses CPU nobody waits for. Each tick
        reads the container's CPU time from the engine and charges what
        exceeds the wall time of the runs in between.
        """
        with self._lock:
            boxes = dict(self._boxes)
        readings = containers.containers_cpu_ns(box.container_id for box in boxes.values())
        for session_pk, box in boxes.items():
            cpu_ns = readings.get(box.container_id)
            if cpu_ns is None:
                continue
            with self._lock:
                meter = self._meters.setdefault(session_pk, SessionMeter())
                previous, runs = meter.cpu_ns, meter.run_seconds
                meter.cpu_ns, meter.run_seconds = cpu_ns, 0.0
            if previous is not None and box.tenant:
                quotas.charge(tenant_slug=box.tenant, seconds=(cpu_ns - previous) / 1e9 - runs)

    # ------------------------------------------------------------ file operations

    def file_op(self, *, session_pk: int, op_id: str, op: dict[str, Any]) -> None:
        """Run one file operation in a session's sandbox and hand the answer to the waiting web request."""
        close_old_connections()  # keeps a healthy connection (CONN_MAX_AGE, see Worker.start)
        answer = wire.FileAnswer(error_code="internal_error", message=FILE_OP_FAILED)
        try:
            box = self.box_for(session_pk, create=False)
        except SandboxError as exc:
            answer = wire.FileAnswer(error_code="session_dead", message=f"The session's sandbox is unavailable: {exc}")
        except Exception:
            logger.exception("file operation on session %s failed", session_pk)
        else:
            with box.lock:
                answer = self._file_op_in(box, session_pk, op)
        finally:
            session_services.session_release(session_pk=session_pk, owner=op_id)
            wire.push(wire.file_answer_key(op_id), answer.encode(), ttl=wire.RESULT_TTL)

    def _file_op_in(self, box: Sandbox, session_pk: int, op: dict[str, Any]) -> wire.FileAnswer:
        """One file operation's answer. A launcher that does not answer in time ends the session.

        The launcher never blocks on a file (FIFOs and devices are refused), so
        a timeout means the sandbox is wedged: its container is destroyed and
        the session marked dead, and later calls say so at once instead of
        waiting for it again.
        """
        try:
            reply = box.request(op, timeout=settings.ISOL8_FILE_OP_TIMEOUT)
        except SandboxError as exc:
            logger.warning("session %s: file operation failed (%s); ending the session", session_pk, exc)
            self.forget(session_pk, destroy=True)
            session_services.session_mark_dead(session_pk=session_pk, reason="its sandbox stopped answering")
            return wire.FileAnswer(
                error_code="session_dead", message="The session's sandbox stopped answering; it has been removed"
            )
        if reply.get("ok"):
            return wire.FileAnswer(data={k: v for k, v in reply.items() if k != "ok"})
        code = str(reply.get("code", "error"))
        if code not in CLIENT_FILE_ERRORS:
            logger.warning("session %s: file operation refused: %s", session_pk, reply.get("error"))
            return wire.FileAnswer(error_code="internal_error", message=FILE_OP_FAILED)
        return wire.FileAnswer(error_code=code, message=str(reply.get("error", "file operation failed")))
