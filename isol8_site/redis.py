"""The Redis clients of a process (main: queue, quotas, answers, cancels; events: stream events), and retries."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from django.conf import settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
# How long a write the service cannot lose (a result, a quota release) keeps
# retrying through a Redis restart before it gives up.
RETRY_SECONDS = 30.0

_client: redis.Redis | None = None
_events_client: redis.Redis | None = None


def get_redis() -> redis.Redis:
    """A process-wide client; its connection pool is thread-safe."""
    global _client
    if _client is None:
        # No read timeout: BLPOP waits as long as a run may take (redis-py 8
        # would otherwise cut every blocking read at 5 s). Keep-alives and the
        # health check detect dead connections instead.
        # Each waiting /execute holds one connection in BLPOP for as long as its
        # run takes, so the pool must be far larger than redis-py's default 100.
        _client = redis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=2,
            socket_timeout=None,
            socket_keepalive=True,
            health_check_interval=30,
            max_connections=10_000,
        )
    return _client


def get_events_redis() -> redis.Redis:
    """The process's client of the events Redis (ISOL8_EVENTS_REDIS_URL: stream events only)."""
    global _events_client
    if _events_client is None:
        # Commands here are short: hundreds of request threads share a few
        # connections, waiting for a free one rather than failing.
        pool = redis.BlockingConnectionPool.from_url(
            settings.ISOL8_EVENTS_REDIS_URL,
            max_connections=64,
            timeout=10,
            socket_connect_timeout=2,
            socket_timeout=10,
            socket_keepalive=True,
            health_check_interval=30,
        )
        _events_client = redis.Redis(connection_pool=pool)
    return _events_client


@contextmanager
def pipeline(joined: Any = None) -> Iterator[Any]:
    """The caller's pipeline ``joined`` (which the caller executes), or a new one executed on exit.

    Lets a write join the caller's round trip on the hot path and still be
    callable on its own.
    """
    if joined is not None:
        yield joined
        return
    pipe = get_redis().pipeline(transaction=False)
    yield pipe
    pipe.execute()


def retrying(operation: Callable[[], T], *, what: str, seconds: float = RETRY_SECONDS) -> T:
    """``operation()``, retried with backoff while Redis cannot be reached (a restart, a blip).

    Only connection failures are retried; ``operation`` must be safe to run
    again (build pipelines inside it). Raises the last error after ``seconds``.
    """
    deadline = time.monotonic() + seconds
    pause = 0.05
    while True:
        try:
            return operation()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() + pause > deadline:
                raise
            logger.warning("%s: Redis unreachable (%s); retrying", what, exc)
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
