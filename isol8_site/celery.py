"""The Celery app: Redis broker, one shared run queue, one queue per worker host.

Start a worker with ``celery -A isol8_site worker -P threads -Q isol8.run,isol8.host.<host>``
(``manage.py serve`` does this). The thread pool matters: every run of a host
shares the process's pool of warm sandboxes and their launcher connections.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isol8_site.settings")

app = Celery("isol8")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def host_queue(host: str) -> str:
    return f"isol8.host.{host}"


@app.on_after_finalize.connect
def _schedule(sender: Celery, **kwargs: Any) -> None:
    from django.conf import settings

    sender.conf.task_default_queue = settings.ISOL8_RUN_QUEUE
    sender.add_periodic_task(settings.ISOL8_REAPER_SECONDS, sender.signature("isol8.reap"), name="reap")
    sender.add_periodic_task(
        settings.ISOL8_PRUNE_SECONDS, sender.signature("isol8.prune_sessions"), name="prune sessions"
    )


@worker_ready.connect
def _start_worker(**kwargs: Any) -> None:
    from executions.worker import get_worker

    get_worker().start()


@worker_shutting_down.connect
def _cancel_runs(**kwargs: Any) -> None:
    # A warm shutdown waits for running tasks: cancel them so it does not
    # wait for a long program's timeout.
    from executions.worker import get_worker

    get_worker().cancel_all()


@worker_shutdown.connect
def _stop_worker(**kwargs: Any) -> None:
    from executions.worker import get_worker

    get_worker().stop()
