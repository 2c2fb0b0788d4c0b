"""Live input of interactive executions (GET /execute/ws): Redis list → the run's sandbox.

The web pushes each client message to ``wire.input_key(execution)`` (at most
wire.INPUT_MAX_QUEUED wait there); while the run lasts, one thread here pops
them and hands them to the run's handle, which forwards them to the launcher
no faster than the program reads its stdin (sandbox/run.py RunHandle). When
the run ends the list is replaced by a marker (wire.end_input): input that
comes too late is refused, as a closed stdin would refuse it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from typing import Any

import redis

from isol8_site import wire
from isol8_site.redis import get_redis
from sandbox.run import RunHandle

logger = logging.getLogger(__name__)

POP_SECONDS = 1  # how often the thread looks whether its run ended
# While a stdin message waits for the program to read, signals and resizes are
# looked for this often (they overtake it).
HELD_POLL_SECONDS = 0.1


def parsed(raw: bytes | str) -> tuple[dict[str, Any], int] | None:
    """A queued message and its stdin bytes, or None when it is not one the web sends."""
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("op") not in wire.INPUT_OPS:
        return None
    size = 0
    if message["op"] == "stdin" and message.get("data"):
        try:
            size = len(base64.b64decode(message["data"], validate=True))
        except (binascii.Error, TypeError, ValueError):
            return None
    return message, size


class InputPump:
    """Forwards one interactive run's input while it lasts (``with InputPump(...):`` around the run)."""

    def __init__(self, execution_id: str, handle: RunHandle) -> None:
        self.execution_id = execution_id
        self.key = wire.input_key(execution_id)
        self.control_key = wire.control_key(execution_id)
        self.handle = handle
        self.thread = threading.Thread(target=self._pump, name=f"input-{execution_id[:8]}", daemon=True)

    def __enter__(self) -> InputPump:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close_input()
        self.thread.join(timeout=POP_SECONDS + 1)
        try:
            wire.end_input(self.execution_id)
        except redis.RedisError:
            pass  # it expires (wire.INPUT_TTL)

    def _pump(self) -> None:
        client = get_redis()
        held: tuple[dict[str, Any], int] | None = None  # stdin waiting for the program to read
        while not self.handle.input_closed:
            if held is not None and self.handle.room_for(held[1], HELD_POLL_SECONDS):
                if not self.handle.send_input(*held):
                    return
                held = None
                continue
            try:
                if held is None:
                    popped = client.blpop([self.control_key, self.key], timeout=POP_SECONDS)
                    raw: Any = popped[1] if popped is not None else None
                else:
                    raw = client.lpop(self.control_key)  # only signals and resizes pass held stdin
            except redis.RedisError as exc:
                logger.warning("reading the input of %s: %s", self.key, exc)
                time.sleep(POP_SECONDS)
                continue
            if raw is None:
                continue
            message = parsed(raw)
            if message is None:
                logger.warning("dropped a malformed input message for %s", self.key)
            elif message[0]["op"] == "stdin":
                held = message
            elif not self.handle.send_input(*message):
                return
