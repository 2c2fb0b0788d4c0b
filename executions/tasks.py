"""Celery entry points: thin, they take ids and call into the worker and services."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from executions.worker import get_worker, reap_lost_executions, remove_orphans
from isol8_site.redis import push_reply


@shared_task(name="isol8.run_execution", ignore_result=True)
def run_execution(execution_id: str) -> None:
    get_worker().run(execution_id)


@shared_task(name="isol8.reap", ignore_result=True)
def reap() -> int:
    """Periodic (beat): fail executions whose worker died or that never started."""
    return reap_lost_executions()


@shared_task(name="isol8.remove_orphans", ignore_result=True)
def remove_orphans_now(reply_key: str) -> None:
    """POST /cleanup: remove this host's leaked containers and say how many."""
    # Young containers may be starting for a run right now: spared.
    removed = remove_orphans(keep=get_worker().owned_container_ids(), min_age=settings.ISOL8_ORPHAN_MIN_AGE)
    push_reply(reply_key, removed, ttl=60)
