"""Execution events: the only module that calls django-eventstream's ``send_event``.

Workers publish each execution's events (``stdout``/``stderr``/``error``/``exit``)
to the channel ``execution-<id>``. django-eventstream appends them to the storage
below and fans them out over Redis pub/sub to every web process, whose listener
wakes the SSE streams of that channel.

Storage is one Redis list per channel: an event's id is its 1-based position
(RPUSH returns it atomically, so ids are dense and ordered), a stream resumes with
one LRANGE, and the list expires EVENT_RETENTION seconds after the ``exit`` event
(or after a safety horizon when a run never ends), so Redis does not grow.

The SSE generator here reuses django-eventstream's listener manager and wire
encoding, but ends the stream right after ``exit`` and sends keep-alive comments
more often than the library's fixed 20 s, as api.md asks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import redis
import redis.asyncio
from django.conf import settings
from django_eventstream import send_event
from django_eventstream.channelmanager import ChannelManagerBase
from django_eventstream.event import Event
from django_eventstream.storage import StorageBase
from django_eventstream.utils import sse_encode_event
from django_eventstream.views import Listener, get_listener_manager

logger = logging.getLogger(__name__)

EXIT = "exit"
KEY_PREFIX = "isol8:events:"
# A list whose run never ended (worker killed) still expires after this long.
SAFETY_TTL = 2 * 24 * 3600
READ_BATCH = 500
STREAM_REDIS_CONNECTIONS = 32
READ_RETRY_SECONDS = 1.0


def channel_for(execution_id: object) -> str:
    return f"execution-{execution_id}"


def _key(channel: str) -> str:
    return KEY_PREFIX + channel


def _redis() -> redis.Redis:
    from isol8_site.redis import get_redis

    return get_redis()


class RedisEventStorage(StorageBase):
    """django-eventstream storage: one expiring Redis list per channel."""

    def append_event(self, channel: str, event_type: str, data: Any) -> Event:
        key = _key(channel)
        record = json.dumps({"type": event_type, "data": data})
        ttl = settings.ISOL8_EVENT_RETENTION if event_type == EXIT else SAFETY_TTL
        pipe = _redis().pipeline(transaction=False)
        pipe.rpush(key, record)
        pipe.expire(key, ttl)
        position, _ = pipe.execute()
        return Event(channel, event_type, data, id=int(position))

    def get_events(self, channel: str, last_id: int, limit: int = 100) -> list[Event]:
        raw = _redis().lrange(_key(channel), last_id, last_id + limit - 1)
        return [_decode(channel, last_id + 1 + i, item) for i, item in enumerate(raw)]

    def get_current_id(self, channel: str) -> int:
        return int(_redis().llen(_key(channel)))


def _decode(channel: str, event_id: int, raw: bytes | str) -> Event:
    record = json.loads(raw)
    return Event(channel, record["type"], record["data"], id=event_id)


class ExecutionChannelManager(ChannelManagerBase):
    """Nothing is readable through django-eventstream's own view.

    Streams are served only by the views of this project, which check the
    tenant before any byte of a stream is sent.
    """

    def get_channels_for_request(self, request: Any, view_kwargs: Any) -> set[str]:
        return set()

    def can_read_channel(self, user: Any, channel: str) -> bool:
        return False

    def is_channel_reliable(self, channel: str) -> bool:
        return True


# ------------------------------------------------------------------ publishing


def publish(execution_id: object, event_type: str, data: str, phase: str | None = "code") -> None:
    """Publish one isol8 stream event ``{"type","data","phase"}`` of an execution."""
    payload: dict[str, Any] = {"type": event_type, "data": data}
    if phase is not None:
        payload["phase"] = phase
    send_event(channel_for(execution_id), event_type, payload)


def has_exit(execution_id: object) -> bool:
    last = _redis().lindex(_key(channel_for(execution_id)), -1)
    return last is not None and json.loads(last).get("type") == EXIT


# ------------------------------------------------------------------- streaming

_async_clients: dict[int, redis.asyncio.Redis] = {}


def _async_redis() -> redis.asyncio.Redis:
    """One pooled async client per event loop, shared by all its streams."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(id(loop))
    if client is None:
        # Reads are short: hundreds of streams share a few connections, waiting
        # for a free one rather than failing when all are momentarily in use.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=STREAM_REDIS_CONNECTIONS, timeout=30
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        _async_clients[id(loop)] = client
    return client


def parse_last_event_id(value: str | None) -> int:
    """Accept ``17`` or django-eventstream's ``channel:17`` form; 0 means the start."""
    if not value:
        return 0
    text = unquote(value.strip()).rsplit(":", 1)[-1]
    try:
        return max(0, int(text))
    except ValueError:
        return 0


def encode(event: Event) -> str:
    # `data` is already the JSON text send_event encoded.
    return sse_encode_event(event.type, event.data, event_id=str(event.id))


async def stream_events(execution_id: object, *, after: int = 0) -> AsyncIterator[str]:
    """SSE text for one execution's events after id ``after``, ending after ``exit``.

    The listener is registered before storage is read, so an event published
    in between is either in the read or wakes the listener: none is missed.
    Storage is the source of truth; the listener only says "look again".
    """
    channel = channel_for(execution_id)
    client = _async_redis()
    listener = Listener()
    listener.channels = {channel}
    listener.assign_loop()
    manager = get_listener_manager()
    manager.add_listener(listener)
    last_id = after
    try:
        yield ": stream-open\n\n"
        while True:
            with manager.lock:
                listener.aevent.clear()
                queued = listener.channel_items.pop(channel, [])
                overflow, listener.overflow = listener.overflow, False
            # Events that arrived over pub/sub, complete and in order right after
            # last_id, are used as they are; anything else means "read storage"
            # (the library drops events past 10 pending per listener).
            events: list[Event] = []
            if not overflow:
                for item in queued:
                    if item.id is None or int(item.id) != last_id + len(events) + 1:
                        events = []
                        break
                    events.append(Event(channel, item.type, item.data, id=int(item.id)))
            if not events:
                try:
                    raw = await client.lrange(_key(channel), last_id, last_id + READ_BATCH - 1)
                except redis.RedisError as exc:
                    # Redis hiccup: the stream stays open and reads again shortly.
                    logger.warning("reading events of %s failed: %s", channel, exc)
                    yield ": retrying\n\n"
                    await asyncio.sleep(READ_RETRY_SECONDS)
                    continue
                events = [_decode(channel, last_id + 1 + i, item) for i, item in enumerate(raw)]
            if events:
                yield "".join(encode(e) for e in events)
                last_id = int(events[-1].id or last_id)
                if events[-1].type == EXIT:
                    return
                if len(events) >= READ_BATCH:
                    continue
            try:
                await asyncio.wait_for(listener.aevent.wait(), timeout=settings.ISOL8_SSE_KEEPALIVE)
            except TimeoutError:
                yield ": keep-alive\n\n"
    finally:
        manager.remove_listener(listener)


def stream_for(execution: Any, *, after: int = 0) -> AsyncIterator[str]:
    """The SSE stream of an execution: live events, or rebuilt from history for runs answered whole."""
    if not execution.streamed:
        # Runs answered whole keep their output in the history only; their
        # stream is rebuilt from it once they have finished.
        return replay_finished(execution.pk, after=after)
    return stream_events(execution.pk, after=after)


async def replay_finished(execution_id: object, *, after: int = 0) -> AsyncIterator[str]:
    """The events of a run that was answered whole, rebuilt from its history row.

    Such runs publish no live events (that would cost every /execute Redis
    writes for a stream nobody reads), so this waits for the run to finish and
    then sends its output as one stdout and one stderr event, and ``exit``.
    """
    from asgiref.sync import sync_to_async

    from executions.models import FINISHED, Execution

    get = sync_to_async(lambda: Execution.objects.get(pk=str(execution_id)), thread_sensitive=False)
    yield ": stream-open\n\n"
    waited = 0.0
    while True:
        execution = await get()
        if execution.status in FINISHED:
            break
        await asyncio.sleep(0.5)
        waited += 0.5
        if waited >= settings.ISOL8_SSE_KEEPALIVE:
            waited = 0.0
            yield ": keep-alive\n\n"
    items: list[tuple[str, str]] = []
    if execution.stdout:
        items.append(("stdout", execution.stdout))
    if execution.stderr:
        items.append(("stderr", execution.stderr))
    if execution.timed_out:
        items.append(("error", "EXECUTION TIMED OUT"))
    elif execution.status not in ("ok",):
        items.append(("error", execution.error or execution.status))
    items.append(("exit", str(execution.exit_code if execution.exit_code is not None else 1)))
    channel = channel_for(execution_id)
    for number, (kind, data) in enumerate(items, start=1):
        if number > after:
            payload = json.dumps({"type": kind, "data": data, "phase": "code"})
            yield encode(Event(channel, kind, payload, id=number))
