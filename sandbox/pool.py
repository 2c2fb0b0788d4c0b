"""Warm sandboxes: started, hardened containers waiting for runs.

Lifecycle rules (sandbox.md) this module enforces:

* A warm container belongs to nobody. The first tenant that runs in it owns it
  for the rest of its life: it is reset after each run and only ever handed to
  the same tenant again (rule 1).
* A reset kills every process of the code user and empties /sandbox, /tmp,
  /dev/shm, /dev/mqueue and System V IPC (rule 2); if it cannot prove that, the
  container is destroyed.
* A run that timed out, was OOM-killed, exhausted its pids, or left the
  launcher's stream in doubt destroys its container (rule 3).
* Containers are labelled with this worker's host so the reaper can find
  orphans (rule 8); while a Sandbox object of this process holds one, the
  sweep spares it (sandbox.containers.held_container_ids).

One pool lives in each worker process; a background thread keeps ``size``
containers per runtime started for the default limits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sandbox.containers import LABEL_POOL, LABEL_TENANT, Sandbox, create_sandbox
from sandbox.errors import SandboxError
from sandbox.spec import Limits

logger = logging.getLogger(__name__)

Key = tuple[str, tuple[object, ...]]  # (runtime or prebuilt image, container profile)
UNASSIGNED = "unassigned"
RESET_WAIT_SECONDS = 0.25


class SandboxPool:
    def __init__(
        self,
        *,
        runtimes: Iterable[str],
        default_limits: Limits,
        size: int,
        idle_per_tenant: int,
        idle_seconds: float,
        prepare: Callable[[Sandbox], None] = lambda box: None,
    ) -> None:
        self.runtimes = list(runtimes)
        self.default_limits = default_limits
        self.size = size
        self.idle_per_tenant = idle_per_tenant
        self.idle_seconds = idle_seconds
        self.prepare = prepare  # run on every new sandbox before its first use
        self._lock = threading.Lock()
        # How acquire found its sandboxes, per runtime (or prebuilt image): the
        # tenant's own reset one, a warm one, or none (a cold start).
        self._found: dict[str, dict[str, int]] = {}
        self._wake = threading.Condition(self._lock)
        self._warm: dict[Key, deque[Sandbox]] = {}
        self._idle: dict[tuple[str, Key], deque[Sandbox]] = {}
        self._starting: dict[Key, int] = {}
        # Used sandboxes being reset right now, per tenant and key: a run of the
        # same tenant waits a moment for one instead of taking a warm one (which
        # would make the pool start another container, ~200 ms of CPU).
        self._resetting: dict[tuple[str, Key], int] = {}
        self._closed = False
        self._thread: threading.Thread | None = None
        # Container removal takes ~100 ms of Docker's time; never on a run's path.
        self._janitor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="isol8-destroy")

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._refill_loop, name="isol8-pool", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            boxes = [b for q in self._warm.values() for b in q]
            boxes += [b for q in self._idle.values() for b in q]
            self._warm.clear()
            self._idle.clear()
            self._wake.notify_all()
        for box in boxes:
            box.destroy()
        self._janitor.shutdown(wait=True)

    def discard_dead(self, is_running: Callable[[str], bool]) -> int:
        """Drop the warm and idle sandboxes whose container no longer runs (the engine restarted); how many.

        The pool stays open and refills itself; live ones stay.
        """
        with self._lock:
            held = [(q, b) for q in (*self._warm.values(), *self._idle.values()) for b in q]
        dead = [(q, b) for q, b in held if not is_running(b.container_id)]
        with self._lock:
            for queue, box in dead:
                if box in queue:
                    queue.remove(box)
            self._wake.notify_all()
        for _, box in dead:
            box.destroy()
        return len(dead)

    def stats(self) -> dict[str, Any]:
        """Sandboxes ready now (warm, idle for a tenant) and how acquire found them, in all and per runtime."""
        with self._lock:
            runtimes: dict[str, dict[str, int]] = {}
            for (image, _), queue in self._warm.items():
                runtimes.setdefault(image, {}).setdefault("warm", 0)
                runtimes[image]["warm"] += len(queue)
            for (_, (image, _)), queue in self._idle.items():
                runtimes.setdefault(image, {}).setdefault("idle", 0)
                runtimes[image]["idle"] += len(queue)
            for image, found in self._found.items():
                runtimes.setdefault(image, {}).update(found)
            return {
                "warm": sum(len(q) for q in self._warm.values()),
                "idle": sum(len(q) for q in self._idle.values()),
                "runtimes": runtimes,
            }

    def _count(self, image: str, how: str) -> None:
        """One acquire served ``how`` (idleHits, warmHits, misses); the caller holds the lock."""
        found = self._found.setdefault(image, {"idleHits": 0, "warmHits": 0, "misses": 0})
        found[how] += 1

    # ------------------------------------------------------------- acquire

    def acquire(
        self, *, tenant: str, runtime: str, limits: Limits, image: str | None = None
    ) -> Sandbox:
        """A clean sandbox for ``tenant``: its own reset one, a warm one, or a new one."""
        key: Key = (image or runtime, limits.container_profile())
        with self._lock:
            deadline = time.monotonic() + RESET_WAIT_SECONDS
            while True:
                idle = self._idle.get((tenant, key))
                while idle:
                    box = idle.pop()
                    if time.monotonic() - box.last_used < self.idle_seconds:
                        box.last_used = time.monotonic()
                        self._count(key[0], "idleHits")
                        return box
                    self._janitor.submit(box.destroy)
                remaining = deadline - time.monotonic()
                if not self._resetting.get((tenant, key)) or remaining <= 0:
                    break
                self._wake.wait(remaining)
            warm = self._warm.get(key)
            if warm:
                box = warm.popleft()
                box.tenant = tenant
                self._wake.notify_all()  # refill
                self._count(key[0], "warmHits")
                return box
            self._count(key[0], "misses")
        # Nothing ready: start one now (the cold path, ~200-300 ms). It is kept for
        # this tenant's later runs, so it names the tenant, not this execution.
        box = create_sandbox(
            runtime=runtime, limits=limits, labels={LABEL_TENANT: tenant, LABEL_POOL: "tenant"},
            image=image,
        )
        box.tenant = tenant
        self._prepare(box)
        return box

    def _prepare(self, box: Sandbox) -> None:
        try:
            self.prepare(box)
        except SandboxError as exc:
            logger.warning("preparing %s failed: %s", box.container_id[:12], exc)

    def release(self, box: Sandbox, *, reusable: bool) -> None:
        """Return a used sandbox: reset it for its tenant, or destroy it."""
        box.runs += 1
        box.last_used = time.monotonic()
        if not reusable or box.broken or self._closed:
            self._janitor.submit(box.destroy)
            return
        slot = (box.tenant, (box.image or box.runtime, box.limits.container_profile()))
        with self._lock:
            self._resetting[slot] = self._resetting.get(slot, 0) + 1
        try:
            clean = box.reset()
        except SandboxError as exc:
            logger.warning("reset of %s failed: %s", box.container_id[:12], exc)
            clean = False
        evicted: Sandbox | None = box
        with self._lock:
            self._resetting[slot] -= 1
            if clean and not self._closed:
                idle = self._idle.setdefault(slot, deque())
                idle.append(box)
                # Too many kept for this tenant: drop the oldest.
                evicted = idle.popleft() if len(idle) > self.idle_per_tenant else None
            self._wake.notify_all()
        if evicted is not None:
            self._janitor.submit(evicted.destroy)

    # -------------------------------------------------------------- refill

    def _deficits(self) -> list[Key]:
        wanted: list[Key] = []
        key_profile = self.default_limits.container_profile()
        for runtime in self.runtimes:
            key: Key = (runtime, key_profile)
            have = len(self._warm.get(key, ())) + self._starting.get(key, 0)
            wanted += [key] * max(0, self.size - have)
        return wanted

    def _refill_loop(self) -> None:
        while True:
            key: Key | None = None
            with self._lock:
                while True:
                    expired = self._expired_idle()
                    deficits = [] if self._closed else self._deficits()
                    if self._closed or deficits or expired:
                        break
                    self._wake.wait(timeout=5.0)
                if deficits:
                    key = deficits[0]
                    self._starting[key] = self._starting.get(key, 0) + 1
                closed = self._closed
            for box in expired:
                box.destroy()
            if closed:
                return
            if key is not None:
                self._start_one(key)

    def _start_one(self, key: Key) -> None:
        runtime = key[0]
        box: Sandbox | None = None
        try:
            box = create_sandbox(
                runtime=runtime,
                limits=self.default_limits,
                # Labels cannot change after creation; the tenant that first
                # uses it owns it from then on (kept in this process and in the
                # execution rows' container ids).
                labels={LABEL_POOL: "warm", LABEL_TENANT: UNASSIGNED},
            )
            self._prepare(box)
        except SandboxError as exc:
            logger.warning("could not start a warm %s sandbox: %s", runtime, exc)
            time.sleep(5.0)  # Docker is unhappy: do not spin
        with self._lock:
            self._starting[key] -= 1
            if box is not None:
                if self._closed:
                    self._janitor.submit(box.destroy)
                else:
                    self._warm.setdefault(key, deque()).append(box)

    def _expired_idle(self) -> list[Sandbox]:
        """Pop idle sandboxes past their idle time (caller holds the lock)."""
        now = time.monotonic()
        expired: list[Sandbox] = []
        for queue in self._idle.values():
            while queue and now - queue[0].last_used >= self.idle_seconds:
                expired.append(queue.popleft())
        return expired
