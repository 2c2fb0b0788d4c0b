"""Celery entry points: thin, they take ids and call into the worker and services."""

from __future__ import annotations

from celery import shared_task

from executions.worker import get_worker, reap_lost_executions


@shared_task(name="isol8.run_execution", ignore_result=True)
def run_execution(execution_id: str) -> None:
    get_worker().run(execution_id)


@shared_task(name="isol8.reap", ignore_result=True)
def reap() -> int:
    """Periodic (beat): fail executions whose worker died or that never started."""
    return reap_lost_executions()
