"""The Celery app: Redis broker, one shared run queue, one queue per worker host, the beat schedule.

It imports no domain code. The worker process loads its tasks (worker/tasks.py)
through ``imports``, which only a worker reads; the web sends tasks by name
(isol8_site/dispatch.py). Start a worker with
``celery -A isol8_site worker -P threads -Q isol8.run,isol8.host.<host>,isol8.webhooks``
(``manage.py serve`` does this). The thread pool matters: every run of a host
shares the process's pool of warm sandboxes and their launcher connections.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from django.conf import settings

from isol8_site import dispatch

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isol8_site.settings")

app = Celery("isol8")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.imports = ("worker.tasks",)


@app.on_after_finalize.connect
def _schedule(sender: Celery, **kwargs: Any) -> None:


    sender.conf.task_default_queue = settings.ISOL8_RUN_QUEUE
    sender.add_periodic_task(settings.ISOL8_REAPER_SECONDS, sender.signature(dispatch.REAP), name="reap")
    sender.add_periodic_task(
        settings.ISOL8_PRUNE_SECONDS, sender.signature(dispatch.PRUNE_SESSIONS), name="prune sessions"
    )
    sender.add_periodic_task(3600.0, sender.signature(dispatch.PURGE_IDEMPOTENCY_KEYS), name="purge idempotency keys")
