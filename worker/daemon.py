"""The worker process's life: start, heartbeat, housekeeping, cancels, orphans, stop.

Celery runs one worker process per host with a thread pool (``-P threads``),
so that all runs of the host share one pool of warm sandboxes and the attached
launcher connections that live in this process. ``start()`` runs when the
worker is ready and ``stop()`` when it shuts down (signal handlers in
worker/tasks.py).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import close_old_connections, connections

from executions import events, services
from executions.models import Execution, Status
from isol8_site import wire
from isol8_site.celery import app as celery_app
from isol8_site.redis import get_redis
from sandbox import config as sandbox_config
from sandbox import containers
from sandbox.containers import LABEL_ROLE
from sandbox.egress import PROXY_ROLE
from sandbox.pool import SandboxPool
from sandbox.run import prepare_sandbox
from sessions_app.models import WorkerHost
from worker.runs import Runner
from worker.sessions import SessionBoxes

logger = logging.getLogger(__name__)


class Worker:
    def __init__(self) -> None:
        cfg = settings.SANDBOX
        self.host = cfg.host
        self.pool = SandboxPool(
            runtimes=cfg.runtimes,
            default_limits=cfg.default_limits,
            size=cfg.pool_size,
            idle_per_tenant=cfg.idle_per_tenant,
            idle_seconds=cfg.idle_seconds,
            prepare=prepare_sandbox,
        )
        self.sessions = SessionBoxes(host=self.host)
        self.runner = Runner(pool=self.pool, sessions=self.sessions, host=self.host,
                             on_engine_down=self.engine_down)
        self.stopping = threading.Event()
        # This worker's Celery node name (to pause its shared queue), and what it last knew.
        self.nodename: str | None = None
        self.taking_shared_runs = True
        self.docker_down_since: float | None = None
        self.draining = False
        self._beat_lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    def start(self, nodename: str | None = None) -> None:
        # Worker threads live long: let each keep its database connection
        # instead of opening one per run (the web's per-request threads cannot).
        # (With PostgreSQL's pool, the pool keeps them: Django refuses a max age there.)
        if "pool" not in connections["default"].settings_dict.get("OPTIONS", {}):
            connections["default"].settings_dict["CONN_MAX_AGE"] = settings.ISOL8_WORKER_DB_CONN_MAX_AGE
        # Runs block on sockets and wake up often; with CPython's default 5 ms
        # switch interval a waking run thread can wait that long for the GIL
        # behind the pool's housekeeping threads.
        sys.setswitchinterval(settings.ISOL8_WORKER_SWITCH_INTERVAL)
        # Whatever this host was running before it (re)started is lost.
        lost = Execution.objects.filter(status=Status.RUNNING, worker_host=self.host)
        for exec_id in lost.values_list("pk", flat=True):
            services.execution_fail(execution_id=str(exec_id), reason=events.WORKER_STOPPED)
        self.nodename = nodename
        WorkerHost.objects.get_or_create(name=self.host)
        containers.uids().check_host_accounts()
        remove_orphans(keep=lambda: self.sessions.container_ids(mark_missing_dead=True))
        containers.remove_stale_lane_dirs()  # sessions that outlive a restart keep theirs
        containers.sync_uids()
        self.heartbeat()
        self.pool.start()
        loops = ((self._heartbeat_loop, "heartbeat"), (self._housekeeping_loop, "housekeeping"),
                 (self._cancel_loop, "cancels"))
        for target, name in loops:
            threading.Thread(target=target, name=f"isol8-{name}", daemon=True).start()
        logger.info("isol8 worker %s ready (%s mode)", self.host, settings.SANDBOX.mode)

    def cancel_all(self) -> None:
        self.stopping.set()
        self.runner.cancel_all()

    def stop(self) -> None:
        """Shut down: runs cancelled, pool emptied. Session containers stay, so a
        restarted worker picks its sessions up again (``serve`` removes them when
        the whole service stops)."""
        self.cancel_all()
        self.pool.close()
        wire.beat_stopped(self.host)
        remove_orphans(keep=self.sessions.container_ids, proxies=True)
        containers.remove_stale_lane_dirs()

    def heartbeat(self) -> None:
        """Say this host is alive, whether its engine answers, its load; stop or resume taking shared runs.

        A host whose engine is down, or that an operator drains, stops
        consuming the shared run queue (its runs go to the other hosts) and
        takes it up again when it can run code and is not draining.
        """
        docker = containers.docker_ping()
        with self._beat_lock:
            if docker and self.docker_down_since is not None:
                # Off the heartbeat's thread: removing containers takes a while.
                threading.Thread(target=self._engine_back, name="isol8-engine-back", daemon=True).start()
            if docker:
                self.docker_down_since = None
            elif self.docker_down_since is None:
                self.docker_down_since = time.time()
            self.draining = self._read_draining()
            wire.beat(self.host, {
                "docker": docker,
                "docker_down_since": self.docker_down_since,
                "draining": self.draining,
                "capacity": settings.ISOL8_HOST_CAPACITY,
                **self.pool.stats(),
            })
            self._take_shared_runs(docker and not self.draining)

    def _engine_back(self) -> None:
        """The engine answers again after an outage: what this worker held of it is stale.

        Pool sandboxes whose container no longer runs are dropped (the pool
        refills), sessions whose container stopped end as dead (their state is
        gone), and those containers are removed. After a mere missed answer
        everything still runs and nothing is dropped.
        """
        try:
            dropped = self.pool.discard_dead(containers.container_running)
            dropped += self.sessions.end_stopped()
            removed = remove_stopped()
        except Exception:
            logger.exception("cleaning up after Docker came back failed; the sweep will retry")
            return
        logger.warning("isol8 worker %s: Docker is back; dropped %d dead sandbox(es), removed %d container(s)",
                       self.host, dropped, removed)

    def engine_down(self) -> None:
        """A run found the engine gone: stop taking shared runs now, not at the next heartbeat."""
        try:
            self.heartbeat()
        except Exception:
            logger.exception("heartbeat after a Docker failure failed")

    def _read_draining(self) -> bool:
        try:
            close_old_connections()
            return WorkerHost.objects.filter(name=self.host, draining=True).exists()
        except Exception:  # noqa: BLE001 - the database away: keep what was known
            logger.warning("cannot read whether %s is draining", self.host)
            return self.draining

    def _take_shared_runs(self, wanted: bool) -> None:
        """Consume the shared run queue or not (Celery's remote control, addressed to this node only)."""
        if wanted == self.taking_shared_runs or self.nodename is None:
            return
        control = celery_app.control
        if wanted:
            control.add_consumer(settings.ISOL8_RUN_QUEUE, destination=[self.nodename], reply=False)
        else:
            control.cancel_consumer(settings.ISOL8_RUN_QUEUE, destination=[self.nodename], reply=False)
        self.taking_shared_runs = wanted
        logger.warning("isol8 worker %s %s the shared run queue (docker %s, draining %s)", self.host,
                       "takes again" if wanted else "stops taking", self.docker_down_since is None, self.draining)

    def owned_container_ids(self) -> set[str]:
        """Containers this worker holds (warm, lent to a run, being reset or created) and its sessions' ones."""
        return containers.held_container_ids() | self.sessions.container_ids()

    def remove_orphans_now(self) -> int:
        """POST /cleanup: this host's leaked containers (young ones may be starting a run: spared)."""
        return remove_orphans(keep=self.owned_container_ids, min_age=settings.ISOL8_ORPHAN_MIN_AGE)

    # ---------------------------------------------------------------- loops

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
                    self.sessions.meter()
                if time.monotonic() - last_sweep >= settings.ISOL8_REAPER_SECONDS:
                    last_sweep = time.monotonic()
                    # Containers being created right now are not owned yet:
                    # only those older than ISOL8_ORPHAN_MIN_AGE count as orphans.
                    self.remove_orphans_now()
                    containers.remove_stale_lane_dirs(min_age=settings.ISOL8_ORPHAN_MIN_AGE)
                    containers.sync_uids()
            except Exception:
                logger.exception("housekeeping failed")

    def _cancel_loop(self) -> None:
        """Kill runs of this worker that a client cancelled (any web process may ask)."""
        while not self.stopping.is_set():
            try:
                pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(wire.CANCEL_CHANNEL)
                while not self.stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message["type"] == "message":
                        data = message["data"]
                        self.runner.cancel(data.decode() if isinstance(data, bytes) else data)
            except Exception:
                logger.exception("cancel listener failed; reconnecting")
                time.sleep(1.0)


def remove_orphans(*, keep: Callable[[], set[str]], min_age: float = 0.0, proxies: bool = False) -> int:
    """Remove this host's containers that no live run, pool or session owns; how many went.

    ``keep`` is asked after the listing: a container listed is either owned by
    then or an orphan (or so young that ``min_age`` spares it), whatever
    changed hands in between.
    """
    removed = 0
    try:
        managed = containers.list_managed(host=settings.SANDBOX.host)
    except Exception as exc:  # noqa: BLE001 - Docker down: nothing to remove now
        logger.warning("cannot list containers: %s", exc)
        return 0
    kept = keep()
    for container in managed:
        young = time.time() - container.created < min_age
        if container.id in kept or containers.being_created(container.labels) or young:
            continue
        if container.labels.get(LABEL_ROLE) == PROXY_ROLE and not proxies:
            continue  # this host's shared egress proxy: removed only when the worker stops
        containers.remove_container(container.id)
        removed += 1
    if removed:
        logger.info("removed %d orphaned sandbox container(s)", removed)
    return removed


def remove_stopped() -> int:
    """Remove this host's containers that no longer run (after an engine outage); how many.

    Nothing of this worker may hold one any more: dead pool sandboxes were
    dropped and sessions whose container stopped were ended before this runs.
    """
    removed = 0
    for container in containers.list_managed(host=settings.SANDBOX.host):
        young = time.time() - container.created < settings.ISOL8_ORPHAN_MIN_AGE
        if container.status == "running" or containers.being_created(container.labels) or young:
            continue
        containers.remove_container(container.id)
        removed += 1
    return removed


_worker: Worker | None = None
_worker_lock = threading.Lock()


def get_worker() -> Worker:
    """This process's Worker; the first call hands the engine its configuration."""
    global _worker
    with _worker_lock:
        if _worker is None:
            sandbox_config.configure(settings.SANDBOX)
            _worker = Worker()
        return _worker
