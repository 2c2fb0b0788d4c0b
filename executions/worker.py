"""The worker process's own state: its sandbox pool, its runs, its heartbeat.

Celery runs one worker process per host with a thread pool (``-P threads``), so
that all runs of the host share one pool of warm sandboxes and the attached
launcher connections that live in this process. ``start()`` is called when the
worker is ready, ``stop()`` when it shuts down (see isol8_site/celery.py).
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone

from executions import events, packages, quotas, sandbox, services
from executions.models import Execution, Status
from executions.pool import SandboxPool
from executions.runner import Publish, RunHandle, prepare_sandbox, run_in_sandbox
from executions.sandbox import DockerUnavailableError, Sandbox, SandboxError
from executions.spec import ExecutionSpec, Limits, RunResult
from isol8_site.redis import get_redis
from sessions_app import services as session_services
from sessions_app.models import Session, SessionState

logger = logging.getLogger(__name__)

def heartbeat_key() -> str:
    """The heartbeats of the workers serving one run queue (one isol8 cluster)."""
    return f"isol8:workers:{settings.ISOL8_RUN_QUEUE}"

WORKER_FAILED = "The worker failed to run this execution; the failure has been logged"
# Launcher file-operation error codes -> HTTP status.
FILE_ERROR_STATUS = {
    "path_outside_sandbox": 400,
    "validation_error": 400,
    "not_found": 404,
    "payload_too_large": 413,
    "sandbox_full": 507,
}


def default_limits() -> Limits:
    d = settings.ISOL8_DEFAULTS
    return Limits(
        timeout_ms=d.timeout_ms,
        memory=d.memory_limit,
        cpu=d.cpu_limit,
        pids=d.pids_limit,
        max_output=d.max_output_size,
        sandbox_size=d.sandbox_size,
        tmp_size=d.tmp_size,
        network=d.network,
    )


def enabled_runtimes() -> list[str]:
    return list(settings.ISOL8_RUNTIMES)


@dataclass
class SessionMeter:
    """CPU a session's container used between its runs (background processes), to charge it."""

    cpu_ns: int | None = None  # the container's CPU time at the last reading
    run_seconds: float = 0.0  # wall time of its runs since then (they are charged on their own)


class Worker:
    def __init__(self) -> None:
        self.host = settings.ISOL8_WORKER_HOST
        self.pool = SandboxPool(
            runtimes=enabled_runtimes(),
            default_limits=default_limits(),
            size=settings.ISOL8_POOL_SIZE,
            idle_per_tenant=settings.ISOL8_TENANT_IDLE_MAX,
            idle_seconds=settings.ISOL8_TENANT_IDLE_SECONDS,
            prepare=prepare_sandbox,
        )
        self.handles: dict[str, RunHandle] = {}
        self.busy: dict[str, Sandbox] = {}  # sandboxes lent to runs in progress
        self.sessions: dict[int, Sandbox] = {}  # session pk -> its sandbox, on this host
        self.meters: dict[int, SessionMeter] = {}  # session pk -> its CPU meter
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.docker_ok = True

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        # Worker threads live long: let each keep its database connection
        # instead of opening one per run (the web's per-request threads cannot).
        connections["default"].settings_dict["CONN_MAX_AGE"] = settings.ISOL8_WORKER_DB_CONN_MAX_AGE
        # Runs block on sockets and wake up often; with CPython's default 5 ms
        # switch interval a waking run thread can wait that long for the GIL
        # behind the pool's housekeeping threads.
        sys.setswitchinterval(settings.ISOL8_WORKER_SWITCH_INTERVAL)
        # Whatever this host was running before it (re)started is lost.
        lost = Execution.objects.filter(status=Status.RUNNING, worker_host=self.host)
        for exec_id in lost.values_list("pk", flat=True):
            services.execution_fail(
                execution_id=str(exec_id), reason="The worker running this execution stopped"
            )
        sandbox.uids().check_host_accounts()
        remove_orphans(keep=self.session_container_ids(mark_missing_dead=True))
        sandbox.sync_uids()
        self.heartbeat()
        self.pool.start()
        loops = ((self._heartbeat_loop, "heartbeat"), (self._housekeeping_loop, "housekeeping"),
                 (self._cancel_loop, "cancels"))
        for target, name in loops:
            threading.Thread(target=target, name=f"isol8-{name}", daemon=True).start()
        logger.info("isol8 worker %s ready (%s mode)", self.host, settings.ISOL8_SANDBOX_MODE)

    def cancel_all(self) -> None:
        self.stopping.set()
        with self.lock:
            handles = list(self.handles.values())
        for handle in handles:
            handle.cancel()

    def stop(self) -> None:
        """Shut down: runs cancelled, pool emptied. Session containers stay, so a
        restarted worker picks its sessions up again (``serve`` removes them when
        the whole service stops)."""
        self.cancel_all()
        self.pool.close()
        get_redis().hdel(heartbeat_key(), self.host)
        remove_orphans(keep=self.session_container_ids(), proxies=True)

    def heartbeat(self) -> None:
        self.docker_ok = sandbox.docker_ping()
        beat = {"at": time.time(), "docker": self.docker_ok, **self.pool.stats()}
        get_redis().hset(heartbeat_key(), self.host, json.dumps(beat))

    def owned_container_ids(self) -> set[str]:
        with self.lock:
            busy = {box.container_id for box in self.busy.values()}
        return busy | self.pool.owned_container_ids() | self.session_container_ids()

    def session_container_ids(self, *, mark_missing_dead: bool = False) -> set[str]:
        """Containers of this host's live sessions (kept by the orphan sweep).

        With ``mark_missing_dead`` (worker start), sessions whose container
        vanished are marked dead, so their next call gets a clear error.
        """
        live = Session.objects.filter(
            worker_host=self.host, state__in=[SessionState.STARTING, SessionState.ACTIVE]
        ).exclude(container_id="")
        wanted = dict(live.values_list("container_id", "pk"))
        if mark_missing_dead and wanted:
            present = {c.id for c in sandbox.list_managed(host=self.host)}
            for container_id, session_pk in wanted.items():
                if container_id not in present:
                    session_services.session_mark_dead(
                        session_pk=session_pk, reason="its container is gone (worker or Docker restarted)"
                    )
        return set(wanted)

    def meter_sessions(self) -> None:
        """Charge each session's CPU time outside its runs to its tenant's month.

        Runs are charged their wall time when they finish; a process a session
        left running in the background uses CPU nobody waits for. Each tick
        reads the container's CPU time from the engine and charges what
        exceeds the wall time of the runs in between.
        """
        with self.lock:
            boxes = dict(self.sessions)
        for session_pk, box in boxes.items():
            cpu_ns = sandbox.container_cpu_ns(box.container_id)
            if cpu_ns is None:
                continue
            with self.lock:
                meter = self.meters.setdefault(session_pk, SessionMeter())
                previous, runs = meter.cpu_ns, meter.run_seconds
                meter.cpu_ns, meter.run_seconds = cpu_ns, 0.0
            if previous is not None and box.tenant:
                quotas.charge(tenant_slug=box.tenant, seconds=(cpu_ns - previous) / 1e9 - runs)

    def _heartbeat_loop(self) -> None:
        """Only the heartbeat: nothing slow may delay it, or the reaper takes this worker for dead."""
        while not self.stopping.wait(settings.ISOL8_HEARTBEAT_SECONDS):
            try:
                self.heartbeat()
            except Exception:
                logger.exception("heartbeat failed")

    def _housekeeping_loop(self) -> None:
        """The slow periodic work: orphan sweeps (container removals) and session metering."""
        last_sweep = last_meter = time.monotonic()
        while not self.stopping.wait(1.0):
            try:
                if time.monotonic() - last_meter >= settings.ISOL8_METER_SECONDS:
                    last_meter = time.monotonic()
                    self.meter_sessions()
                if time.monotonic() - last_sweep >= settings.ISOL8_REAPER_SECONDS:
                    last_sweep = time.monotonic()
                    # Containers being created right now are not owned yet:
                    # only those older than ISOL8_ORPHAN_MIN_AGE count as orphans.
                    remove_orphans(keep=self.owned_container_ids(), min_age=settings.ISOL8_ORPHAN_MIN_AGE)
                    sandbox.sync_uids()
            except Exception:
                logger.exception("housekeeping failed")

    def _cancel_loop(self) -> None:
        """Kill runs of this worker that a client cancelled (any web process may ask)."""
        while not self.stopping.is_set():
            try:
                pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(services.CANCEL_CHANNEL)
                while not self.stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message["type"] == "message":
                        execution_id = _text(message["data"])
                        with self.lock:
                            handle = self.handles.get(execution_id)
                        if handle is not None:
                            handle.cancel()
            except Exception:
                logger.exception("cancel listener failed; reconnecting")
                time.sleep(1.0)

    # ------------------------------------------------------------------ runs

    def run(self, execution_id: str) -> None:
        """Run one queued execution end to end (the body of the Celery task)."""
        close_old_connections()  # keeps a healthy connection (CONN_MAX_AGE, see start())
        execution = services.execution_claim(execution_id=execution_id)
        if execution is None:
            return  # cancelled while queued, or another worker has it
        handle = RunHandle(execution_id=execution_id)
        with self.lock:
            self.handles[execution_id] = handle
        box: Sandbox | None = None
        try:
            spec, limits = services.execution_spec(execution=execution)
            publish = events.LivePublisher(execution.pk) if execution.streamed else None
            if execution.session_id is not None:
                self._run_in_session(execution, spec, limits, handle, publish)
                return
            prebuilt = packages.covering_image(runtime=spec.runtime, packages=spec.install_packages)
            try:
                box = self.pool.acquire(
                    tenant=execution.tenant.slug,
                    runtime=spec.runtime,
                    limits=limits,
                    image=prebuilt.tag if prebuilt else None,
                )
            except DockerUnavailableError as exc:
                result = RunResult(status="error", error=str(exc), error_code="docker_unavailable")
            except SandboxError as exc:
                result = RunResult(status="error", error=f"Could not start a sandbox: {exc}")
            else:
                with self.lock:
                    self.busy[execution_id] = box
                result = self._execute(box, execution, spec, limits, handle, publish, in_session=False)
            live = publish if isinstance(publish, events.LivePublisher) else None
            services.execution_finish(execution=execution, result=result, live=live)
        except Exception:
            # A bug or an infrastructure failure: the log has the details, the client a sentence.
            logger.exception("execution %s failed in the worker", execution_id)
            services.execution_fail(execution_id=execution_id, reason=WORKER_FAILED)
            if box is not None:
                box.broken = True
        finally:
            with self.lock:
                self.handles.pop(execution_id, None)
            if box is not None:
                self.pool.release(box, reusable=not box.broken)
                with self.lock:
                    self.busy.pop(execution_id, None)

    # -------------------------------------------------------------- sessions

    def _run_in_session(
        self,
        execution: Execution,
        spec: ExecutionSpec,
        limits: Limits,
        handle: RunHandle,
        publish: Publish | None,
    ) -> None:
        session_pk = execution.session_id
        assert session_pk is not None
        finished = False
        try:
            try:
                prebuilt = packages.covering_image(runtime=spec.runtime, packages=spec.install_packages)
                box = self._session_sandbox(
                    session_pk, tenant=execution.tenant.slug, create=True, image=prebuilt.tag if prebuilt else None
                )
            except DockerUnavailableError as exc:
                result = RunResult(status="error", error=str(exc), error_code="docker_unavailable")
            except SessionDeletedError:
                result = RunResult(status="cancelled", exit_code=137, error="Cancelled: the session was deleted")
            except SandboxError as exc:
                result = RunResult(status="error", error=f"Session sandbox unavailable: {exc}")
            else:
                # The session claim keeps one run at a time; the box's own lock makes
                # sure of it even if a claim was lost (a reaper that took this worker
                # for dead released it): two runs never share a launcher's stream.
                with box.lock:
                    result = self._execute(box, execution, spec, limits, handle, publish, in_session=True)
                    with self.lock:
                        self.meters.setdefault(session_pk, SessionMeter()).run_seconds += result.duration_ms / 1000
                    self._after_session_run(session_pk, box)
            # execution_finish frees the session before the client hears the result.
            live = publish if isinstance(publish, events.LivePublisher) else None
            services.execution_finish(execution=execution, result=result, live=live)
            finished = True
        finally:
            if not finished:
                session_services.session_release(session_pk=session_pk, owner=execution.pk)

    def _after_session_run(self, session_pk: int, box: Sandbox) -> None:
        """Keep a session usable after a bad run, or declare it dead."""
        if not box.broken:
            return
        # A timeout, OOM or pids exhaustion: kill what is left of the run and
        # carry on. A broken stream or a dead container ends the session.
        try:
            if sandbox.container_running(box.container_id) and box.request({"op": "kill"}).get("clean"):
                box.broken = False
                return
        except SandboxError:
            pass
        self._forget_session(session_pk, destroy=True)
        session_services.session_mark_dead(session_pk=session_pk, reason="its sandbox failed")

    def _execute(
        self,
        box: Sandbox,
        execution: Execution,
        spec: ExecutionSpec,
        limits: Limits,
        handle: RunHandle,
        publish: Publish | None,
        *,
        in_session: bool,
    ) -> RunResult:
        """Install the run's packages into ``box`` when it needs them, then run it."""
        source = ""
        if spec.install_packages:
            prebuilt = packages.covering_image(runtime=spec.runtime, packages=spec.install_packages)
            if prebuilt is not None and box.image == prebuilt.tag:
                source = f"prebuilt:{prebuilt.tag}"
                if prebuilt.setup_script:
                    spec.setup_script = f"{prebuilt.setup_script}\n{spec.setup_script}"
            else:
                try:
                    source = self._install(box, execution.tenant.slug, spec, publish)
                except packages.InstallError as exc:
                    return RunResult(
                        status="error",
                        error=str(exc),
                        error_code="install_failed",
                        exit_code=exc.exit_code,
                        container_id=box.container_id,
                    )
        result = run_in_sandbox(
            box,
            spec,
            limits,
            in_session=in_session,
            max_file_bytes=settings.ISOL8_FILE_MAX_BYTES,
            history_max=settings.ISOL8_HISTORY_MAX_OUTPUT,
            publish=publish,
            handle=handle,
        )
        result.package_source = source
        return result

    def _install(self, box: Sandbox, tenant: str, spec: ExecutionSpec, publish: Publish | None) -> str:
        """Unpack the (cached, or now installed) package set into ``box``; where it came from."""
        key = packages.set_key(runtime=spec.runtime, packages=spec.install_packages)
        if key in box.installed:
            return "cache"
        archive, cached = packages.package_archive(
            tenant=tenant,
            runtime=spec.runtime,
            packages=spec.install_packages,
            on_output=(lambda name, text: publish(name, text, "setup")) if publish else None,
        )
        try:
            reply = box.request({"op": "put_tar", "content": base64.b64encode(archive).decode()}, timeout=120)
        except SandboxError as exc:
            raise packages.InstallError(f"Package install failed: {exc}", 1) from exc
        if not reply.get("ok"):
            raise packages.InstallError(f"Package install failed: {reply.get('error')}", 1)
        box.installed.add(key)
        return "cache" if cached else "install"

    def _session_sandbox(
        self, session_pk: int, *, tenant: str = "", create: bool, image: str | None = None
    ) -> Sandbox:
        """The session's sandbox on this host: known, re-attached, or (first run) new.

        A known sandbox is answered from memory: the session row is only read
        when the container has to be found or made (``tenant`` is needed then).
        """
        with self.lock:
            box = self.sessions.get(session_pk)
        if box is not None and not box.broken:
            return box
        session = Session.objects.select_related("tenant").get(pk=session_pk)
        limits = Limits.from_json(session.limits)
        if session.container_id:
            box = sandbox.adopt_sandbox(
                container_id=session.container_id, runtime=session.runtime, limits=limits
            )
            if box is not None:
                box.tenant = session.tenant.slug
                prepare_sandbox(box)  # idempotent: keeps the fork-server setting after a worker restart
            if box is None:
                session_services.session_mark_dead(session_pk=session.pk, reason="its container is gone")
                raise SandboxError("the session's container is gone; delete the session and start a new one")
        elif create:
            box = sandbox.create_sandbox(
                runtime=session.runtime,
                limits=limits,
                labels={
                    sandbox.LABEL_SESSION: str(session.pk),
                    sandbox.LABEL_TENANT: tenant,
                },
                image=image,
            )
            box.tenant = tenant
            if not session_services.session_attach_container(session_pk=session.pk, container_id=box.container_id):
                box.destroy()
                raise SessionDeletedError("the session was deleted while its sandbox was starting")
            prepare_sandbox(box)
        else:
            raise SandboxError("the session has no sandbox yet")
        with self.lock:
            self.sessions[session.pk] = box
        return box

    def _forget_session(self, session_pk: int, *, destroy: bool) -> None:
        with self.lock:
            box = self.sessions.pop(session_pk, None)
            self.meters.pop(session_pk, None)
        if box is not None and destroy:
            box.destroy()

    def session_file_op(self, *, session_pk: int, op_id: str, op: dict[str, Any]) -> None:
        """Run one file operation in a session's sandbox and push the answer to the web."""
        close_old_connections()  # keeps a healthy connection (CONN_MAX_AGE, see start())
        status, body = 500, {"error": "The file operation failed; it has been logged.", "code": "internal_error"}
        try:
            box = self._session_sandbox(session_pk, create=False)
        except SandboxError as exc:
            status, body = 409, {"error": f"The session's sandbox is unavailable: {exc}", "code": "session_dead"}
        except Exception:
            logger.exception("file operation on session %s failed", session_pk)
        else:
            with box.lock:
                status, body = self._file_op_in(box, session_pk, op)
        finally:
            session_services.session_release(session_pk=session_pk, owner=op_id)
            session_services.file_reply_push(op_id=op_id, status=status, body=body)

    def _file_op_in(self, box: Sandbox, session_pk: int, op: dict[str, Any]) -> tuple[int, dict[str, Any]]:
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
            self._forget_session(session_pk, destroy=True)
            session_services.session_mark_dead(session_pk=session_pk, reason="its sandbox stopped answering")
            gone = "The session's sandbox stopped answering; it has been removed"
            return 409, {"error": gone, "code": "session_dead"}
        if reply.get("ok"):
            return 200, {k: v for k, v in reply.items() if k != "ok"}
        code = str(reply.get("code", "error"))
        if code not in FILE_ERROR_STATUS:
            logger.warning("session %s: file operation refused: %s", session_pk, reply.get("error"))
            failed = "The file operation failed in the sandbox; it has been logged."
            return 500, {"error": failed, "code": "internal_error"}
        return FILE_ERROR_STATUS[code], {"error": str(reply.get("error", "file operation failed")), "code": code}

    def drop_session(self, *, session_pk: int, container_id: str) -> None:
        """Remove a stopped session's container (DELETE, prune, admin terminate)."""
        self._forget_session(session_pk, destroy=False)
        sandbox.remove_container(container_id)


class SessionDeletedError(SandboxError):
    """The session was deleted (DELETE, prune, admin) before its sandbox was ready."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def remove_orphans(*, keep: set[str], min_age: float = 0.0, proxies: bool = False) -> int:
    """Remove this host's containers that no live run, pool or session owns."""
    removed = 0
    try:
        containers = sandbox.list_managed(host=settings.ISOL8_WORKER_HOST)
    except Exception as exc:  # noqa: BLE001 - Docker down: nothing to remove now
        logger.warning("cannot list containers: %s", exc)
        return 0
    for container in containers:
        if container.id in keep or time.time() - container.created < min_age:
            continue
        if container.labels.get(sandbox.LABEL_ROLE) == "egress-proxy" and not proxies:
            continue  # this host's shared egress proxy: removed only when the worker stops
        sandbox.remove_container(container.id)
        removed += 1
    if removed:
        logger.info("removed %d orphaned sandbox container(s)", removed)
    return removed


def alive_hosts() -> set[str]:
    """Worker hosts whose heartbeat is fresh (3 missed beats = gone)."""
    beats = {_text(k): json.loads(v) for k, v in get_redis().hgetall(heartbeat_key()).items()}
    horizon = 3 * settings.ISOL8_HEARTBEAT_SECONDS
    return {host for host, beat in beats.items() if time.time() - beat["at"] < horizon}


def reap_lost_executions() -> int:
    """Fail executions whose worker is gone or that waited in the queue too long.

    Runs in Celery beat's periodic task; any process may do it because it only
    looks at heartbeats and the database. Right after Redis (re)started, a
    worker's heartbeat can be stale only because Redis was away: nothing is
    reaped until every worker had its full heartbeat horizon to beat again.
    """
    horizon = 3 * settings.ISOL8_HEARTBEAT_SECONDS
    if int(get_redis().info("server")["uptime_in_seconds"]) < horizon + 1:
        return 0
    alive = alive_hosts()
    failed = 0
    running = Execution.objects.filter(status=Status.RUNNING).exclude(worker_host__in=alive)
    for exec_id in running.values_list("pk", flat=True):
        failed += services.execution_fail(
            execution_id=str(exec_id), reason="The worker running this execution stopped"
        )
    cutoff = timezone.now() - timedelta(seconds=settings.ISOL8_QUEUE_TIMEOUT + 30)
    queued = Execution.objects.filter(status=Status.QUEUED, created_at__lt=cutoff)
    for exec_id in queued.values_list("pk", flat=True):
        failed += services.execution_fail(
            execution_id=str(exec_id), reason="No worker picked this execution up in time"
        )
    return failed


_worker: Worker | None = None


def get_worker() -> Worker:
    global _worker
    if _worker is None:
        _worker = Worker()
    return _worker
