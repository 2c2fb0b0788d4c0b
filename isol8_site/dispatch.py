"""The only door from the web to the workers: Celery tasks sent by name.

The web never imports the worker's code. It sends these task names (the
worker's tasks, worker/tasks.py, register under the same names) to a queue:
one-shot runs to the cluster's shared run queue, anything touching a
session's container to the queue of the host that holds it.
"""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.conf import settings

from isol8_site import tracing

RUN_EXECUTION = "isol8.run_execution"
SESSION_FILE_OP = "isol8.session_file_op"
STOP_SESSION_CONTAINER = "isol8.stop_session_container"
REMOVE_ORPHANS = "isol8.remove_orphans"
REAP = "isol8.reap"
PRUNE_SESSIONS = "isol8.prune_sessions"
DELIVER_WEBHOOK = "isol8.deliver_webhook"
PURGE_IDEMPOTENCY_KEYS = "isol8.purge_idempotency_keys"


def host_queue(host: str) -> str:
    """The queue only the worker of ``host`` consumes."""
    return f"isol8.host.{host}"


def worker_queues(host: str) -> str:
    """What the worker of ``host`` consumes (celery -Q): shared runs, its own work, webhook deliveries."""
    return f"{settings.ISOL8_RUN_QUEUE},{host_queue(host)},{settings.ISOL8_WEBHOOK_QUEUE}"


class _Sent:
    """What ``send_task`` returns here: the task's id and no Celery result object.

    Answers travel through Redis (isol8_site/wire.py); Celery's default
    AsyncResult would build a result backend in every new web thread, ~1 ms
    of every /execute.
    """

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.ignored = True


def send(name: str, *args: Any, queue: str | None = None, countdown: float | None = None) -> None:
    """Send task ``name`` with ``args`` to ``queue`` (default: the shared run queue), after ``countdown`` s.

    Publishing rides out a short Redis restart (CELERY_TASK_PUBLISH_RETRY_POLICY);
    if Redis stays away, kombu's OperationalError leaves here.
    """
    # The current app is isol8's (isol8_site/celery.py, loaded with the project).
    # The trace context (when tracing is on) rides in the message's headers.
    current_app.send_task(
        name, args=args, queue=queue or settings.ISOL8_RUN_QUEUE, ignore_result=True,
        result_cls=_Sent,  # type: ignore[arg-type]  # send_task only sets .ignored on it
        headers=tracing.inject() or None, countdown=countdown,
    )
