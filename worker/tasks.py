"""Celery's entry points in the worker: thin, they take ids and call the worker or a service.

The names are isol8_site/dispatch.py's (the web sends them by name). The
signal handlers start and stop this process's Worker with Celery's.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from executions import idempotency, services, webhooks
from executions.reaper import reap_lost_executions
from isol8_site import dispatch, tracing, wire
from sessions_app.services import sessions_prune
from worker.daemon import get_worker


@shared_task(name=dispatch.RUN_EXECUTION, ignore_result=True, bind=True)
def run_execution(self: Any, execution_id: str) -> None:
    # Custom message headers (the web's trace context) land on the task's request.
    with tracing.continued({"traceparent": getattr(self.request, "traceparent", None),
                            "tracestate": getattr(self.request, "tracestate", None)}):
        get_worker().runner.run(execution_id)


@shared_task(name=dispatch.SESSION_FILE_OP, ignore_result=True)
def session_file_op(session_pk: int, op_id: str, op: dict[str, Any]) -> None:
    get_worker().sessions.file_op(session_pk=session_pk, op_id=op_id, op=op)


@shared_task(name=dispatch.STOP_SESSION_CONTAINER, ignore_result=True)
def stop_session_container(session_pk: int, container_id: str) -> None:
    get_worker().sessions.drop(session_pk=session_pk, container_id=container_id)


@shared_task(name=dispatch.REMOVE_ORPHANS, ignore_result=True)
def remove_orphans(request_id: str) -> None:
    """POST /cleanup: remove this host's leaked containers and say how many."""
    wire.push(wire.cleanup_key(request_id), get_worker().remove_orphans_now(), ttl=60)


@shared_task(name=dispatch.DELIVER_WEBHOOK, ignore_result=True)
def deliver_webhook(execution_id: str, attempt: int) -> None:
    """One attempt at POSTing a finished execution's result to its callbackUrl; queues the next if it failed."""
    delay = webhooks.deliver(execution_id=execution_id, attempt=attempt)
    if delay is not None:
        services.webhook_schedule(execution_id=execution_id, attempt=attempt + 1, delay=delay)


@shared_task(name=dispatch.PURGE_IDEMPOTENCY_KEYS, ignore_result=True)
def purge_idempotency_keys() -> int:
    """Periodic (beat): forget Idempotency-Keys older than ISOL8_IDEMPOTENCY_SECONDS."""
    return idempotency.purge_expired()


@shared_task(name=dispatch.REAP, ignore_result=True)
def reap() -> int:
    """Periodic (beat): fail executions whose worker died or that never started."""
    return reap_lost_executions()


@shared_task(name=dispatch.PRUNE_SESSIONS, ignore_result=True)
def prune_sessions() -> int:
    """Periodic (beat): stop sessions idle longer than cleanup.maxContainerAgeMs."""
    return sessions_prune()


@worker_ready.connect
def _start_worker(**kwargs: Any) -> None:
    tracing.configure("isol8-worker")  # only if an OTLP endpoint is set
    consumer = kwargs.get("sender")
    get_worker().start(nodename=getattr(consumer, "hostname", None))


@worker_shutting_down.connect
def _cancel_runs(**kwargs: Any) -> None:
    # A warm shutdown waits for running tasks: cancel them so it does not
    # wait for a long program's timeout.
    get_worker().cancel_all()


@worker_shutdown.connect
def _stop_worker(**kwargs: Any) -> None:
    get_worker().stop()
    tracing.shutdown()
