"""Failed authentications are throttled per client address.

After ISOL8_AUTH_FAILURES_PER_MINUTE failed attempts from one address within a
minute, every request from it gets 429 until that minute is over, whatever
key it sends: guessing keys (or a weak master key) cannot be done at speed.

Failures are counted in Redis, so all web processes add up to one count; the
verdict "blocked" is cached in the process that saw the last failure, so a
successful request costs nothing here (no Redis round trip on the hot path).
A process that did not see the failures learns of the block at the next
failure it sees.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from django.conf import settings

from isol8_site.errors import RateLimited
from isol8_site.redis import get_redis

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
_blocked: dict[str, float] = {}  # address -> monotonic time the block ends
_lock = threading.Lock()


def _refusal(seconds: float) -> RateLimited:
    wait = max(1, int(seconds) + 1)
    return RateLimited(f"Too many failed authentications from this address; try again in {wait} s", retry_after=wait)


def check(address: str | None) -> None:
    """Raise 429 while ``address`` is blocked."""
    if not address:
        return
    with _lock:
        until = _blocked.get(address)
        if until is not None and until <= time.monotonic():
            del _blocked[address]
            until = None
    if until is not None:
        raise _refusal(until - time.monotonic())


def failures_key(address: str) -> str:
    """The count of one address's failures, per cluster (clusters sharing a Redis do not block each other)."""
    return f"isol8:authfail:{settings.ISOL8_RUN_QUEUE}:{address}"


def failed(address: str | None) -> None:
    """Count one failed authentication of ``address``; block it once over the limit."""
    if not address:
        return
    key = failures_key(address)
    try:
        pipe = get_redis().pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS, nx=True)
        pipe.ttl(key)
        count, _, ttl = pipe.execute()
    except redis.RedisError as exc:
        logger.warning("cannot count a failed authentication: %s", exc)
        return
    if int(count) >= settings.ISOL8_AUTH_FAILURES_PER_MINUTE:
        with _lock:
            _blocked[address] = time.monotonic() + max(1, int(ttl))
