"""Celery entry points for sessions. File operations and container removal run on
the worker that owns the session's container (they are sent to its host queue)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from executions.worker import get_worker
from sessions_app.services import sessions_prune


@shared_task(name="isol8.session_file_op", ignore_result=True)
def session_file_op(session_pk: int, op_id: str, op: dict[str, Any]) -> None:
    get_worker().session_file_op(session_pk=session_pk, op_id=op_id, op=op)


@shared_task(name="isol8.stop_session_container", ignore_result=True)
def stop_session_container(session_pk: int, container_id: str) -> None:
    get_worker().drop_session(session_pk=session_pk, container_id=container_id)


@shared_task(name="isol8.prune_sessions", ignore_result=True)
def prune_sessions() -> int:
    """Periodic (beat): stop sessions idle longer than cleanup.maxContainerAgeMs."""
    return sessions_prune()
