"""The shared Redis client of a process (quota counters, result push, cancels)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from django.conf import settings

_client: redis.Redis | None = None


def get_redis() -> redis.Redis:
    """A process-wide client; its connection pool is thread-safe."""
    global _client
    if _client is None:
        # No read timeout: BLPOP waits as long as a run may take (redis-py 8
        # would otherwise cut every blocking read at 5 s). Keep-alives and the
        # health check detect dead connections instead.
        _client = redis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=2,
            socket_timeout=None,
            socket_keepalive=True,
            health_check_interval=30,
        )
    return _client


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


def push_reply(key: str, value: str | int, *, ttl: int, pipe: Any = None) -> None:
    """Hand a reply to whoever waits on ``key`` with BLPOP; it expires if nobody does.

    With ``pipe`` the commands join the caller's pipeline, which the caller executes.
    """
    with pipeline(pipe) as p:
        p.rpush(key, value)
        p.expire(key, ttl)
