"""One execution on this worker, from claim to finish.

claim (a conditional update: a run starts once) → a sandbox (warm from the
pool, or the session's own) → its packages → the run → finish (history row,
quota, answer or terminal events). User code failing is a normal result; a
sandbox that fails is a result with an error; a bug here is logged and the
client is told the worker failed, in a sentence without the exception's text.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import nullcontext

from django.conf import settings
from django.db import close_old_connections

from executions import events, services
from executions.models import Execution
from isol8_site import tracing
from sandbox.containers import Sandbox
from sandbox.errors import DockerUnavailableError, InstallError, SandboxError
from sandbox.gateway import default_gateway
from sandbox.images import covering_image
from sandbox.netfilter import EgressPolicy
from sandbox.packages import prepare_packages
from sandbox.pool import SandboxPool
from sandbox.run import Publish, RunHandle, run_in_sandbox
from sandbox.spec import ExecutionSpec, Limits, RunResult
from sessions_app import services as session_services
from worker.inputs import InputPump
from worker.sessions import SessionBoxes, SessionDeletedError

logger = logging.getLogger(__name__)


class Runner:
    """The runs in progress on this worker: their handles (to cancel them) and borrowed sandboxes."""

    def __init__(
        self, *, pool: SandboxPool, sessions: SessionBoxes, host: str = "",
        on_engine_down: Callable[[], None] = lambda: None,
    ) -> None:
        self.pool = pool
        self.sessions = sessions
        self.host = host
        # Told when a sandbox could not be had because Docker stopped answering.
        self.on_engine_down = on_engine_down
        self._handles: dict[str, RunHandle] = {}
        self._lock = threading.Lock()

    def cancel(self, execution_id: str) -> None:
        with self._lock:
            handle = self._handles.get(execution_id)
        if handle is not None:
            handle.cancel()

    def cancel_all(self) -> None:
        with self._lock:
            handles = list(self._handles.values())
        for handle in handles:
            handle.cancel()

    def run(self, execution_id: str) -> None:
        """Run one queued execution end to end (the body of the Celery task)."""
        with tracing.span("execution.run", execution_id=execution_id):
            self._run(execution_id)

    def _run(self, execution_id: str) -> None:
        close_old_connections()  # keeps a healthy connection (CONN_MAX_AGE, see Worker.start)
        execution = services.execution_claim(execution_id=execution_id)
        if execution is None:
            return  # cancelled while queued, or another worker has it
        handle = RunHandle(execution_id=execution_id)
        with self._lock:
            self._handles[execution_id] = handle
        box: Sandbox | None = None
        try:
            spec, limits = services.execution_spec(execution=execution)
            publish = events.LivePublisher(execution.pk) if execution.streamed else None
            if execution.session_id is not None:
                self._run_in_session(execution, spec, limits, handle, publish)
                return
            try:
                with tracing.span("sandbox.acquire", runtime=spec.runtime):
                    box = self._acquire(execution, spec, limits)
            except DockerUnavailableError as exc:
                self.on_engine_down()
                # Nothing of the program ran: another host may run it.
                if services.execution_requeue(execution_id=execution_id, host=self.host):
                    return
                result = RunResult(status="error", error=str(exc), error_code="docker_unavailable")
            except SandboxError as exc:
                result = RunResult(status="error", error=events.NO_SANDBOX.format(reason=exc))
            else:
                result = execute(box, execution, spec, limits, handle, publish, in_session=False)
            with tracing.span("execution.finish", status=result.status):
                services.execution_finish(execution=execution, result=result, live=publish)
        except Exception:
            # A bug or an infrastructure failure: the log has the details, the client a sentence.
            logger.exception("execution %s failed in the worker", execution_id)
            services.execution_fail(execution_id=execution_id, reason=events.WORKER_FAILED)
            if box is not None:
                box.broken = True
        finally:
            with self._lock:
                self._handles.pop(execution_id, None)
            if box is not None:
                self.pool.release(box, reusable=not box.broken)

    def _acquire(self, execution: Execution, spec: ExecutionSpec, limits: Limits) -> Sandbox:
        prebuilt = covering_image(runtime=spec.runtime, packages=spec.install_packages)
        return self.pool.acquire(
            tenant=execution.tenant.slug,
            runtime=spec.runtime,
            limits=limits,
            image=prebuilt.tag if prebuilt else None,
        )

    def _run_in_session(
        self,
        execution: Execution,
        spec: ExecutionSpec,
        limits: Limits,
        handle: RunHandle,
        publish: events.LivePublisher | None,
    ) -> None:
        session_pk = execution.session_id
        assert session_pk is not None
        finished = False
        try:
            try:
                prebuilt = covering_image(runtime=spec.runtime, packages=spec.install_packages)
                box = self.sessions.box_for(
                    session_pk, tenant=execution.tenant.slug, create=True, image=prebuilt.tag if prebuilt else None
                )
            except DockerUnavailableError as exc:
                self.on_engine_down()
                result = RunResult(status="error", error=str(exc), error_code="docker_unavailable")
            except SessionDeletedError:
                result = RunResult(status="cancelled", exit_code=137, error=events.SESSION_DELETED)
            except SandboxError as exc:
                result = RunResult(status="error", error=events.NO_SESSION_SANDBOX.format(reason=exc))
            else:
                # The session claim keeps one run at a time; the box's own lock makes
                # sure of it even if a claim was lost (a reaper that took this worker
                # for dead released it): two runs never share a launcher's stream.
                with box.lock:
                    result = execute(box, execution, spec, limits, handle, publish, in_session=True)
                    self.sessions.after_run(session_pk, box, seconds=result.duration_ms / 1000)
            # execution_finish frees the session before the client hears the result.
            services.execution_finish(execution=execution, result=result, live=publish)
            finished = True
        finally:
            if not finished:
                session_services.session_release(session_pk=session_pk, owner=execution.pk)


def execute(
    box: Sandbox,
    execution: Execution,
    spec: ExecutionSpec,
    limits: Limits,
    handle: RunHandle,
    publish: Publish | None,
    *,
    in_session: bool,
) -> RunResult:
    """Make the run's packages available in ``box``, then run it."""
    try:
        with tracing.span("sandbox.packages", count=len(spec.install_packages)):
            source = prepare_packages(box, tenant=execution.tenant.slug, spec=spec, publish=publish)
    except InstallError as exc:
        return RunResult(
            status="error", error=str(exc), error_code="install_failed", exit_code=exc.exit_code,
            container_id=box.container_id,
        )
    lane = box.lane
    if lane is not None:
        # A filtered run: its connections go through while it runs, under its policy
        # (none at all if the spec has none: no ports are open then).
        policy = EgressPolicy.from_json(spec.egress) if spec.egress else EgressPolicy(ports=())
        default_gateway().begin(lane, tenant=execution.tenant.slug, policy=policy)
    try:
        with (InputPump(str(execution.pk), handle) if spec.interactive else nullcontext(),
              tracing.span("sandbox.run", container=box.container_id[:12], session=in_session)):
            result = run_in_sandbox(
                box, spec, limits, in_session=in_session, history_max=settings.ISOL8_HISTORY_MAX_OUTPUT,
                publish=publish, handle=handle,
            )
    finally:
        network_log = default_gateway().end(lane) if lane is not None else None
    result.package_source = source
    result.network_log = network_log
    return result
