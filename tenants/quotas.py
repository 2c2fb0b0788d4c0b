"""Per-tenant quotas, enforced atomically in Redis across all web processes (and worker charges).

* concurrency: a sorted set of the tenant's executions in flight, each scored
  with the time after which it no longer counts. An empty quota (None) is no limit. A slot is released when the
  execution ends however it ends (worker, cancel, reaper); if every one of those
  misses it (a crash at the worst moment), the score still expires it, so a
  quota can never leak forever.
* rate: a sliding one-minute window of start times.
* monthly budget: execution seconds added up per tenant and calendar month.
* egress (network "filtered"): the egress proxy's totals of finished runs,
  added up per tenant and calendar month (a count for the admin, no quota).

Acquiring checks everything in one Lua script, so two requests racing for the
last slot cannot both get it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from isol8_site import metrics
from isol8_site.errors import QuotaExceeded, Unavailable
from isol8_site.redis import get_redis, pipeline
from isol8_site.wire import QUOTA_PREFIX
from tenants.models import Tenant

ACQUIRE = """
local running, rate, month, global = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, expires, id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local max_running, max_rate = tonumber(ARGV[4]), tonumber(ARGV[5])
local budget, max_global = tonumber(ARGV[6]), tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', running, '-inf', now)
redis.call('ZREMRANGEBYSCORE', rate, '-inf', now - 60)
redis.call('ZREMRANGEBYSCORE', global, '-inf', now)
if budget >= 0 then
  local used = tonumber(redis.call('GET', month) or '0')
  if used >= budget then return {'month', 0} end
end
if max_running >= 0 and redis.call('ZCARD', running) >= max_running then
  local first = redis.call('ZRANGE', running, 0, 0, 'WITHSCORES')
  return {'concurrency', first[2] or now}
end
if max_rate >= 0 and redis.call('ZCARD', rate) >= max_rate then
  local first = redis.call('ZRANGE', rate, 0, 0, 'WITHSCORES')
  return {'rate', first[2] or now}
end
if redis.call('ZCARD', global) >= max_global then
  return {'global', 0}
end
redis.call('ZADD', running, expires, id)
redis.call('ZADD', rate, now, id)
redis.call('ZADD', global, expires, id)
redis.call('EXPIRE', running, 86400)
redis.call('EXPIRE', rate, 120)
redis.call('EXPIRE', global, 86400)
return {'ok', 0}
"""
GLOBAL_POLL_SECONDS = 0.02


def _cluster_key(name: str) -> str:
    # Services sharing one Redis but not one run queue (test runs, staging) are
    # separate clusters with separate global limits.
    return f"{QUOTA_PREFIX}{name}:{settings.ISOL8_RUN_QUEUE}"


def _keys(tenant_slug: str) -> tuple[str, str, str]:
    # Keyed by slug (unique and stable), not by row id, so test databases or
    # a restored backup sharing one Redis never mix their counters.
    month = timezone.now().strftime("%Y%m")
    return (
        f"{QUOTA_PREFIX}running:{tenant_slug}",
        f"{QUOTA_PREFIX}rate:{tenant_slug}",
        f"{QUOTA_PREFIX}month:{tenant_slug}:{month}",
    )


def quota_exceeded(message: str, retry_after: float) -> QuotaExceeded:
    return QuotaExceeded(message, retry_after=max(1, math.ceil(retry_after)))


def acquire(*, tenant: Tenant, execution_id: str, hold_seconds: float) -> None:
    """Take the tenant's concurrency slot and rate token and a global slot.

    A tenant quota that is used up is 429 at once. When only the global
    ``maxConcurrent`` is reached, the request waits for a slot, in a bounded
    line (ISOL8_MAX_QUEUE_DEPTH) for at most ISOL8_QUEUE_TIMEOUT, then gets 503.
    """
    verdict, when = _try_acquire(tenant, execution_id, hold_seconds)
    if verdict == "global":
        verdict, when = _wait_for_global_slot(tenant, execution_id, hold_seconds)
    if verdict == "ok":
        return
    metrics.rejected(tenant=tenant.slug, kind=verdict if verdict in ("concurrency", "rate") else "monthly")
    now = time.time()
    if verdict == "concurrency":
        raise quota_exceeded(
            f"Quota exceeded: at most {tenant.max_concurrent} concurrent executions", 1
        )
    if verdict == "rate":
        retry = float(when) + 60 - now
        raise quota_exceeded(f"Quota exceeded: at most {tenant.max_per_minute} executions per minute", retry)
    next_month = (timezone.now().replace(day=28) + timedelta(days=4)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    raise quota_exceeded(
        f"Quota exceeded: the monthly budget of {tenant.monthly_seconds} execution seconds is used up",
        (next_month - timezone.now()).total_seconds(),
    )


def _try_acquire(tenant: Tenant, execution_id: str, hold_seconds: float) -> tuple[str, float]:
    now = time.time()
    verdict, when = _acquire_script()(
        keys=[*_keys(tenant.slug), _cluster_key("global")],
        args=[
            now, now + hold_seconds, execution_id, _limit(tenant.max_concurrent), _limit(tenant.max_per_minute),
            _limit(tenant.monthly_seconds), settings.ISOL8_CONFIG.max_concurrent,
        ],
    )
    return (verdict.decode() if isinstance(verdict, bytes) else str(verdict)), float(when)


def _limit(value: int | None) -> int:
    """A quota for the script: -1 is "no limit"."""
    return -1 if value is None else int(value)


def _wait_for_global_slot(tenant: Tenant, execution_id: str, hold_seconds: float) -> tuple[str, float]:
    r = get_redis()
    position = int(r.incr(_cluster_key("waiting")))
    r.expire(_cluster_key("waiting"), int(settings.ISOL8_QUEUE_TIMEOUT) + 60)
    try:
        if position > settings.ISOL8_MAX_QUEUE_DEPTH:
            metrics.rejected(tenant=tenant.slug, kind="queue_full")
            raise Unavailable("The service is at capacity and its queue is full; try again shortly")
        deadline = time.monotonic() + settings.ISOL8_QUEUE_TIMEOUT
        while time.monotonic() < deadline:
            time.sleep(GLOBAL_POLL_SECONDS)
            verdict, when = _try_acquire(tenant, execution_id, hold_seconds)
            if verdict != "global":
                return verdict, when
        metrics.rejected(tenant=tenant.slug, kind="queue_timeout")
        raise Unavailable("The service is at capacity (maxConcurrent); try again shortly")
    finally:
        r.decr(_cluster_key("waiting"))


_script: Any = None


def _acquire_script() -> Any:
    global _script
    if _script is None:
        _script = get_redis().register_script(ACQUIRE)
    return _script


def release(*, tenant_slug: str, execution_id: str, seconds: float = 0.0, pipe: Any = None) -> None:
    """Free the execution's slot and charge its run time to the month.

    With ``pipe`` the commands join a caller's pipeline (one round trip with
    the result push on the hot path) and the caller executes it.
    """
    running, _, month = _keys(tenant_slug)
    with pipeline(pipe) as p:
        p.zrem(running, execution_id)
        p.zrem(_cluster_key("global"), execution_id)
        if seconds > 0:
            p.incrbyfloat(month, seconds)
            p.expire(month, 40 * 86400)


def charge(*, tenant_slug: str, seconds: float) -> None:
    """Add ``seconds`` to the tenant's month (CPU its sessions used between runs)."""
    if seconds <= 0:
        return
    _, _, month = _keys(tenant_slug)
    with pipeline() as p:
        p.incrbyfloat(month, seconds)
        p.expire(month, 40 * 86400)


@dataclass(frozen=True)
class Usage:
    running: int
    last_minute: int
    month_seconds: float


def tenant_usage(*, tenant: Tenant) -> Usage:
    running, rate, month = _keys(tenant.slug)
    now = time.time()
    r = get_redis()
    return Usage(
        running=int(r.zcount(running, now, "+inf")),
        last_minute=int(r.zcount(rate, now - 60, "+inf")),
        month_seconds=float(r.get(month) or 0),
    )


# The totals of a run's network log that a tenant's month adds up (sandbox/spec.py RunResult.network_log).
EGRESS_TOTALS = ("connections", "allowed", "blocked", "bytesUp", "bytesDown")
MONTH_TTL = 40 * 86400


def _egress_key(tenant_slug: str) -> str:
    return f"{QUOTA_PREFIX}egress:{tenant_slug}:{timezone.now().strftime('%Y%m')}"


def count_egress(*, tenant_slug: str, totals: dict[str, Any], pipe: Any = None) -> None:
    """Add a finished filtered run's egress totals to its tenant's month (a Redis hash).

    With ``pipe`` the commands join the caller's pipeline (execution_finish's
    one round trip). Values that are not counts are skipped, not trusted.
    """
    counts = {name: int(totals[name]) for name in EGRESS_TOTALS
              if isinstance(totals.get(name), int) and not isinstance(totals[name], bool) and totals[name] > 0}
    if not counts:
        return
    key = _egress_key(tenant_slug)
    with pipeline(pipe) as p:
        for name, value in counts.items():
            p.hincrby(key, name, value)
        p.expire(key, MONTH_TTL)


def egress_usage(*, tenant: Tenant) -> dict[str, int]:
    """The tenant's egress totals this month: connections, allowed, blocked, bytesUp, bytesDown."""
    raw = get_redis().hgetall(_egress_key(tenant.slug))
    values = {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}
    return {name: values.get(name, 0) for name in EGRESS_TOTALS}


def hold_seconds_for(timeout_ms: int) -> float:
    """How long a slot may count at most: queueing, the run, and grace."""
    return settings.ISOL8_QUEUE_TIMEOUT + timeout_ms / 1000 + settings.ISOL8_RESULT_GRACE + 30
