"""The reaper: executions whose worker is gone, or that no worker picked up, end as errors.

It runs as a periodic task (beat schedules it; any worker executes it): it
only looks at the workers' heartbeats and the database, so it needs nothing
of the worker that ran an execution. Failing an execution frees its quota
slot and session claim and tells its waiters (services.execution_fail).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from executions import events, services
from executions.models import Execution, Status
from isol8_site import wire
from isol8_site.redis import get_redis
from sessions_app import services as sessions


def reap_lost_executions() -> int:
    """Fail running executions of dead workers and queued ones nobody picked up; how many.

    Right after Redis (re)started, a worker's heartbeat can be stale only
    because Redis was away: nothing is reaped until every worker had its full
    heartbeat horizon to beat again.
    """
    horizon = 3 * settings.ISOL8_HEARTBEAT_SECONDS
    if int(get_redis().info("server")["uptime_in_seconds"]) < horizon + 1:
        return 0
    alive = wire.alive_hosts()
    failed = 0
    running = Execution.objects.filter(status=Status.RUNNING).exclude(worker_host__in=alive)
    for exec_id in running.values_list("pk", flat=True):
        failed += services.execution_fail(execution_id=str(exec_id), reason=events.WORKER_STOPPED)
    cutoff = timezone.now() - timedelta(seconds=settings.ISOL8_QUEUE_TIMEOUT + 30)
    queued = Execution.objects.filter(status=Status.QUEUED, created_at__lt=cutoff)
    for exec_id in queued.values_list("pk", flat=True):
        failed += services.execution_fail(execution_id=str(exec_id), reason=events.NEVER_PICKED)
    # Sessions of a host lost for good (ISOL8_HOST_LOST_SECONDS) say so in their state.
    sessions.sessions_of_lost_hosts_mark_dead()
    return failed
