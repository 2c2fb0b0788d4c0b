"""Every Redis key and message that the web and the workers share, in one place.

The web and a worker never call each other: a run is a Celery message
(isol8_site/dispatch.py), and everything coming back travels through the keys
below, in the formats defined here. Keys of one cluster (one run queue) are
kept apart from another's that shares the Redis.

* results of runs answered whole: a list per execution, pushed once, popped
  by the waiting ``POST /execute`` (``ResultMessage``);
* secrets of an execution, kept out of the database until its worker reads them;
* cancels: a pub/sub channel carrying execution ids;
* answers to session file operations: a list per operation (``FileAnswer``);
* answers to ``POST /cleanup``: a list per request, one count per worker;
* worker heartbeats: one hash per cluster, a JSON beat per worker host;
* tenants' quota counters (tenants/quotas.py) and stream events
  (executions/events.py, on the events Redis) use the prefixes named here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from isol8_site.redis import get_redis, pipeline

RESULT_TTL = 300
SECRETS_PREFIX = "isol8:secrets:"
RESULT_PREFIX = "isol8:result:"
FILE_ANSWER_PREFIX = "isol8:file:"
CLEANUP_PREFIX = "isol8:cleanup:"
INPUT_PREFIX = "isol8:input:"
# An interactive execution's input (GET /execute/ws → its worker): JSON
# messages {"op": "stdin", "data": base64} | {"op": "stdin", "eof": true} |
# {"op": "signal", "signal": "SIGINT"} | {"op": "resize", "cols", "rows"}.
# At most INPUT_MAX_QUEUED wait in Redis; the web waits while the list is full.
INPUT_OPS = ("stdin", "signal", "resize")
# Signals and resizes wait in a list of their own (``control_key``), so they
# overtake stdin that the program has not read yet.
# When the run ends its worker replaces the stdin list with the string INPUT_ENDED
# (for INPUT_ENDED_TTL): input pushed after that is refused, not left behind.
INPUT_MAX_QUEUED = 16
INPUT_TTL = 3600
INPUT_ENDED = "ended"
INPUT_ENDED_TTL = 120
PUSH_INPUT = """
if redis.call('TYPE', KEYS[1]).ok == 'string' then return -1 end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[2]) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
"""
CANCEL_CHANNEL = "isol8:cancel"
QUOTA_PREFIX = "isol8:q:"
EVENTS_PREFIX = "isol8:events:"
EVENTS_NOTIFY_CHANNEL = "isol8:events:notify"


def result_key(execution_id: object) -> str:
    return f"{RESULT_PREFIX}{execution_id}"


def secrets_key(execution_id: object) -> str:
    return f"{SECRETS_PREFIX}{execution_id}"


def file_answer_key(op_id: object) -> str:
    return f"{FILE_ANSWER_PREFIX}{op_id}"


def cleanup_key(request_id: object) -> str:
    return f"{CLEANUP_PREFIX}{request_id}"


def input_key(execution_id: object) -> str:
    """An interactive run's stdin messages (and, once it ended, the INPUT_ENDED marker)."""
    return f"{INPUT_PREFIX}{execution_id}"


def control_key(execution_id: object) -> str:
    """An interactive run's signal and resize messages."""
    return f"{INPUT_PREFIX}{execution_id}:control"


def push_input(execution_id: object, message: dict[str, Any]) -> int:
    """Queue one input message for the run's worker: 1 queued, 0 the queue is full (try again), -1 the run ended."""
    target = input_key(execution_id) if message.get("op") == "stdin" else control_key(execution_id)
    return int(
        get_redis().eval(
            PUSH_INPUT, 2, input_key(execution_id), target, json.dumps(message), INPUT_MAX_QUEUED, INPUT_TTL
        )
    )


def end_input(execution_id: object) -> None:
    """The run ended: what is queued is dropped and later pushes are refused."""
    pipe = get_redis().pipeline(transaction=True)
    pipe.delete(input_key(execution_id), control_key(execution_id))
    pipe.set(input_key(execution_id), INPUT_ENDED, ex=INPUT_ENDED_TTL)
    pipe.execute()


def requeue_key(execution_id: object) -> str:
    """How often a one-shot run went back to the shared queue because its host's engine was down."""
    return f"isol8:requeued:{execution_id}"


def heartbeat_key() -> str:
    """The heartbeats of the workers serving one run queue (one isol8 cluster)."""
    return f"isol8:workers:{settings.ISOL8_RUN_QUEUE}"


# ----------------------------------------------------------------- messages


@dataclass(frozen=True)
class ResultMessage:
    """A worker's answer to a waiting ``POST /execute``: a result, or a domain error.

    It travels as ``"result <result JSON>"`` or ``"error <code> <message>"``.
    The result JSON is passed on to the client as it is (no decode and
    re-encode on the hot path); an error's code is mapped to HTTP by
    isol8_site/errors.py like any other domain error.
    """

    result: bytes | None = None  # the result object's JSON
    error_code: str = ""
    message: str = ""

    def encode(self) -> str:
        if self.result is not None:
            return "result " + self.result.decode()
        return f"error {self.error_code} {self.message}"

    @staticmethod
    def decode(raw: bytes | str) -> ResultMessage:
        data = raw.encode() if isinstance(raw, str) else raw
        kind, _, rest = data.partition(b" ")
        if kind == b"result":
            return ResultMessage(result=rest)
        code, _, message = rest.partition(b" ")
        return ResultMessage(error_code=code.decode(), message=message.decode())


@dataclass(frozen=True)
class FileAnswer:
    """A worker's answer to a session file operation: its data, or a domain error's code and message."""

    data: dict[str, Any] | None = None
    error_code: str = ""
    message: str = ""

    def encode(self) -> str:
        return json.dumps({"data": self.data, "code": self.error_code, "message": self.message})

    @staticmethod
    def decode(raw: bytes | str) -> FileAnswer:
        obj = json.loads(raw)
        return FileAnswer(data=obj["data"], error_code=obj["code"], message=obj["message"])


def push(key: str, value: str | int, *, ttl: int, pipe: Any = None) -> None:
    """Hand an answer to whoever waits on ``key`` with BLPOP; it expires if nobody does.

    With ``pipe`` the commands join the caller's pipeline, which the caller executes.
    """
    with pipeline(pipe) as p:
        p.rpush(key, value)
        p.expire(key, ttl)


# --------------------------------------------------------------- heartbeats


def worker_beats() -> dict[str, dict[str, Any]]:
    """Each worker host's last heartbeat (``at``: unix time, ``docker``: its engine answers, pool stats)."""
    raw = get_redis().hgetall(heartbeat_key())
    return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}


def beat(host: str, facts: dict[str, Any]) -> None:
    get_redis().hset(heartbeat_key(), host, json.dumps({"at": time.time(), **facts}))


def forget(host: str) -> None:
    get_redis().hdel(heartbeat_key(), host)


def beat_stopped(host: str) -> None:
    """A worker that shuts down says so: it is gone at once, and its stop time is kept (see host_lost)."""
    beat(host, {"stopped": True, "docker": False})


def alive_hosts(beats: dict[str, dict[str, Any]] | None = None) -> set[str]:
    """Worker hosts whose heartbeat is fresh (3 missed beats = gone) and that did not say they stopped."""
    horizon = 3 * settings.ISOL8_HEARTBEAT_SECONDS
    now = time.time()
    return {
        host for host, b in (worker_beats() if beats is None else beats).items()
        if now - b["at"] < horizon and not b.get("stopped")
    }


def host_usable(host: str, beats: dict[str, dict[str, Any]]) -> bool:
    """The host's worker is alive and its Docker engine answers."""
    return host in alive_hosts(beats) and bool(beats[host].get("docker"))


def host_lost(host: str, beats: dict[str, dict[str, Any]]) -> bool:
    """The host has been unusable for longer than ISOL8_HOST_LOST_SECONDS (or is unknown to Redis).

    Until then it may be restarting (a worker or engine restart keeps its
    sessions' containers): callers wait or retry rather than give up on it.
    """
    if host_usable(host, beats):
        return False
    beat_ = beats.get(host)
    if beat_ is None:
        return True
    down_since = beat_.get("docker_down_since") if not beat_.get("stopped") else None
    if host in alive_hosts(beats) and down_since is None:
        return False
    since = float(down_since if down_since is not None else beat_["at"])
    return time.time() - since > settings.ISOL8_HOST_LOST_SECONDS
