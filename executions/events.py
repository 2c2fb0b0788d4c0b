"""Execution events: stored in Redis, streamed over SSE through django-eventstream's machinery.

Workers publish each execution's events (``stdout``/``stderr``/``error``/``exit``)
to the channel ``execution-<id>``: the storage below (django-eventstream's
storage interface) appends them to the execution's Redis list and notifies
every web process; each web process's notifier wakes the SSE streams of that
channel through django-eventstream's listener manager, and the streams encode
events with its SSE encoder. (``send_event`` itself is not used: it would also
publish to a GRIP proxy and cannot tell the first event of a run from the
others, which matters below.)

Storage is one Redis list per channel, on the events Redis (ISOL8_EVENTS_REDIS_URL:
an instance of its own with a memory limit and eviction, so events can never
push out broker messages or quota counters). An event's id is its 1-based
position (RPUSH returns it atomically, so ids are dense and ordered), a stream
resumes with one LRANGE, and the list expires EVENT_RETENTION seconds after the
``exit`` event (or after a safety horizon when a run never ends). A record is
``<type>\\n<data JSON>``: the JSON the SSE ``data:`` line carries, encoded once,
UTF-8 (not ``\\u`` escapes).

Only a run's first event creates its list (RPUSH); every later one is
appended only to a list that exists (RPUSHX). A list that vanished mid-run (the
events Redis restarted, or evicted it) is therefore never replaced by a shorter
one with the same ids: the publisher sees it, stops publishing live output, and
the streams end from the history. Streams never hang on a lost event: when an
execution is finished in the database but its ``exit`` is not in Redis, the
rest of the stream is rebuilt from the history row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote

import redis
import redis.asyncio
from asgiref.sync import sync_to_async
from django.conf import settings
from django_eventstream.channelmanager import ChannelManagerBase
from django_eventstream.event import Event
from django_eventstream.storage import StorageBase
from django_eventstream.utils import sse_encode_event
from django_eventstream.views import Listener, get_listener_manager

from executions.models import FINISHED, Execution, Status
from isol8_site import metrics
from isol8_site.errors import QuotaExceeded
from isol8_site.redis import get_events_redis
from isol8_site.wire import EVENTS_NOTIFY_CHANNEL, EVENTS_PREFIX

logger = logging.getLogger(__name__)

EXIT = "exit"
KEY_PREFIX = EVENTS_PREFIX
NOTIFY_CHANNEL = EVENTS_NOTIFY_CHANNEL
# A list whose run never ended (worker killed) still expires after this long.
SAFETY_TTL = 2 * 24 * 3600
READ_BATCH = 500
STREAM_REDIS_CONNECTIONS = 32
READ_RETRY_SECONDS = 1.0
# How long publishing one event keeps retrying through a Redis outage.
PUBLISH_RETRY_SECONDS = 30.0
STREAMS_KEY = "isol8:streams:"

# ---- Every text a stream or a failed execution carries, in one place.
TIMEOUT_EVENT = "EXECUTION TIMED OUT"
TIMEOUT_MARKER = "\n--- EXECUTION TIMED OUT ---"  # the end of a timed-out run's stderr in its result
OOM_EVENT = "OUT OF MEMORY (killed at the memory limit)"
CANCELLED_EVENT = "EXECUTION CANCELLED"
SERVICE_FAILED_EVENT = "The service failed to run this execution"
LIVE_OUTPUT_GONE = (
    "The rest of the live output is no longer available (the event store lost it or it expired); "
    "the whole output is in GET /executions/{execution_id}"
)
# Why an execution the service lost ended (its `error`, and its stream's error event).
WORKER_STOPPED = "The worker running this execution stopped"
WORKER_SILENT = "The worker running this execution stopped answering"
WORKER_FAILED = "The worker failed to run this execution; the failure has been logged"
NEVER_PICKED = "No worker picked this execution up in time"
QUEUE_UNREACHABLE = "The service's queue was unreachable"
CANCELLED = "Cancelled"
SESSION_DELETED = "Cancelled: the session was deleted"
NO_SANDBOX = "Could not start a sandbox: {reason}"
NO_SESSION_SANDBOX = "Session sandbox unavailable: {reason}"


def setup_failed_event(exit_code: object) -> str:
    return f"Setup script failed (exit code {exit_code})"
STREAM_SLOT_SECONDS = 60


def channel_for(execution_id: object) -> str:
    return f"execution-{execution_id}"


def _key(channel: str) -> str:
    return KEY_PREFIX + channel


def encode_data(payload: dict[str, Any]) -> str:
    """The JSON of one event, as its SSE ``data:`` line carries it."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


# Append one event and notify the web processes, in one round trip. Only the
# first event of a run may create the list; 0 means "the list is gone".
APPEND = """
local key, record, channel, create, ttl = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local position
if create == '1' then position = redis.call('RPUSH', key, record) else position = redis.call('RPUSHX', key, record) end
if position == 0 then return 0 end
redis.call('EXPIRE', key, ttl)
redis.call('PUBLISH', ARGV[5], channel .. '\\n' .. position .. '\\n' .. record)
return position
"""


class EventsLostError(Exception):
    """The run's event list vanished (the events Redis restarted or evicted it)."""


class RedisEventStorage(StorageBase):
    """django-eventstream storage: one expiring Redis list per channel, one round trip per event."""

    def append_event(self, channel: str, event_type: str, data: Any, *, first: bool = True) -> Event:
        """Append an event; raises EventsLostError when a later event finds its list gone."""
        ttl = settings.ISOL8_EVENT_RETENTION if event_type == EXIT else SAFETY_TTL
        record = f"{event_type}\n{data}"
        position = int(get_events_redis().eval(
            APPEND, 1, _key(channel), record, channel, "1" if first else "0", ttl, NOTIFY_CHANNEL
        ))
        if position == 0:
            raise EventsLostError(channel)
        return Event(channel, event_type, data, id=position)

    def get_events(self, channel: str, last_id: int, limit: int = 100) -> list[Event]:
        raw = get_events_redis().lrange(_key(channel), last_id, last_id + limit - 1)
        return [_decode(channel, last_id + 1 + i, item) for i, item in enumerate(raw)]

    def get_current_id(self, channel: str) -> int:
        return int(get_events_redis().llen(_key(channel)))


def _decode(channel: str, event_id: int, raw: bytes | str) -> Event:
    text = raw.decode() if isinstance(raw, bytes) else raw
    event_type, _, data = text.partition("\n")
    return Event(channel, event_type, data, id=event_id)


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


class EventsUnavailableError(Exception):
    """The events Redis stayed unreachable for PUBLISH_RETRY_SECONDS."""


_storage = RedisEventStorage()


def publish(
    execution_id: object,
    event_type: str,
    data: str | dict[str, Any],
    phase: str | None = "code",
    *,
    first: bool,
    retry_seconds: float = PUBLISH_RETRY_SECONDS,
) -> None:
    """Publish one isol8 stream event ``{"type","data","phase"}`` of an execution.

    ``data`` is text, except for a stateful cell's ``display`` (a MIME bundle).

    ``first``: it is the run's first event (it creates the list). A Redis that
    restarts or blips is waited for (retrying with backoff for
    ``retry_seconds``); after that EventsUnavailableError says the event is
    lost. EventsLostError: the list vanished; nothing more can be appended.
    """
    payload: dict[str, Any] = {"type": event_type, "data": data}
    if phase is not None:
        payload["phase"] = phase
    text = encode_data(payload)
    deadline = time.monotonic() + retry_seconds
    pause = 0.05
    while True:
        try:
            _storage.append_event(channel_for(execution_id), event_type, text, first=first)
            return
        except redis.RedisError as exc:
            if time.monotonic() + pause > deadline:
                raise EventsUnavailableError(str(exc)) from exc
            logger.warning("publishing an event of %s failed (%s); retrying", execution_id, exc)
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def nudge(execution_id: object) -> None:
    """Make the streams of an execution look at it again (it ended without events in Redis)."""
    try:
        get_events_redis().publish(NOTIFY_CHANNEL, f"{channel_for(execution_id)}\n0\n")
    except redis.RedisError as exc:
        logger.warning("could not nudge the streams of %s: %s (they look again at their next keep-alive)",
                       execution_id, exc)


def announce_end(execution_id: object, events: list[tuple[str, str]]) -> None:
    """The terminal events of a run that ended outside its worker (cancel, reaper).

    Appended only if the run's list exists; otherwise its streams are nudged
    and end from the history row.
    """
    try:
        for event_type, data in events:
            publish(execution_id, event_type, data, first=False, retry_seconds=5.0)
    except (EventsLostError, EventsUnavailableError):
        nudge(execution_id)


def has_exit(execution_id: object) -> bool:
    last = get_events_redis().lindex(_key(channel_for(execution_id)), -1)
    return last is not None and _decode("", 0, last).type == EXIT


class LivePublisher:
    """A streamed run's events, capped in bytes, riding out Redis outages.

    Output past ISOL8_EVENTS_MAX_BYTES is not published (the history keeps its
    own bounded copy); a marker says so once. If the events Redis stays
    unreachable, or the run's list vanished, publishing stops and ``lost`` is
    set; the streams then end from the history.
    """

    def __init__(self, execution_id: object) -> None:
        self.execution_id = execution_id
        self.published = 0
        self.bytes = 0
        self.capped = False
        self.lost = False

    def __call__(self, event_type: str, data: str | dict[str, Any], phase: str | None) -> None:
        if self.lost or self.capped:
            return
        self.bytes += len(data) if isinstance(data, str) else len(json.dumps(data))
        if self.bytes > settings.ISOL8_EVENTS_MAX_BYTES:
            self.capped = True
            event_type = "stderr" if event_type == "display" else event_type
            data = f"\n--- LIVE OUTPUT STOPPED: over {settings.ISOL8_EVENTS_MAX_BYTES} bytes of events ---\n"
        self.send(event_type, data, phase)

    def send(self, event_type: str, data: str | dict[str, Any], phase: str | None = "code") -> None:
        """Publish one event (output or terminal) unless live events were lost."""
        if self.lost:
            return
        try:
            publish(self.execution_id, event_type, data, phase, first=self.published == 0)
            self.published += 1
        except (EventsLostError, EventsUnavailableError) as exc:
            logger.error("events of %s lost (%s); its streams end from the history", self.execution_id, exc)
            self.lost = True
            nudge(self.execution_id)


# ------------------------------------------------------------------- streaming

_async_clients: dict[int, redis.asyncio.Redis] = {}
_notifiers: dict[int, asyncio.Task[None]] = {}


def _async_redis() -> redis.asyncio.Redis:
    """One pooled async client per event loop, shared by all its streams."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(id(loop))
    if client is None:
        # Reads are short: hundreds of streams share a few connections, waiting
        # for a free one rather than failing when all are momentarily in use.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.ISOL8_EVENTS_REDIS_URL, max_connections=STREAM_REDIS_CONNECTIONS, timeout=30
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        _async_clients[id(loop)] = client
    return client


async def _notify_loop() -> None:
    """Fan the events Redis's notifications out to this process's streams, forever.

    A lost connection (Redis restarted) is retried with backoff; once back,
    every stream is woken to read its storage again, so nothing published
    meanwhile is missed.
    """
    manager = get_listener_manager()
    pause = 0.2
    while True:
        pubsub = redis.asyncio.Redis.from_url(settings.ISOL8_EVENTS_REDIS_URL, socket_keepalive=True).pubsub()
        try:
            await pubsub.subscribe(NOTIFY_CHANNEL)
            _wake_all(manager)
            pause = 0.2
            async for message in pubsub.listen():
                if message["type"] != "message":
                    continue
                channel, event_id, record = message["data"].decode().split("\n", 2)
                event = _decode(channel, int(event_id), record)
                manager.add_to_queues(channel, event)
        except (redis.RedisError, OSError) as exc:
            logger.warning("event notifications lost (%s); reconnecting in %.1f s", exc, pause)
        finally:
            try:
                await pubsub.aclose()
            except (redis.RedisError, OSError):
                pass
        await asyncio.sleep(pause)
        pause = min(pause * 2, 5.0)


def _wake_all(manager: Any) -> None:
    """Make every stream of this process read its storage (an event without an id means "look")."""
    with manager.lock:
        channels = list(manager.listeners_by_channel)
    for channel in channels:
        manager.add_to_queues(channel, Event(channel, "", "", id=None))


def _ensure_notifier() -> None:
    loop = asyncio.get_running_loop()
    task = _notifiers.get(id(loop))
    if task is None or task.done():
        _notifiers[id(loop)] = loop.create_task(_notify_loop())


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
    # `data` is already the JSON text.
    return sse_encode_event(event.type, event.data, event_id=str(event.id))


def history_events(execution: Any) -> list[tuple[str, str]]:
    """An execution's events rebuilt from its history row: its output, then how it ended."""
    items: list[tuple[str, str]] = []
    if execution.stdout:
        items.append(("stdout", execution.stdout))
    if execution.stderr:
        items.append(("stderr", execution.stderr))
    items += terminal_events(execution)
    return items


def terminal_events(execution: Any) -> list[tuple[str, str]]:
    """The ``error`` (when there is one) and ``exit`` events of a finished execution."""
    items: list[tuple[str, str]] = []
    if execution.timed_out or execution.status == Status.TIMEOUT:
        items.append(("error", TIMEOUT_EVENT))
    elif execution.status == Status.CANCELLED:
        items.append(("error", CANCELLED_EVENT))
    elif execution.status != Status.OK:
        items.append(("error", execution.error or execution.status))
    items.append(("exit", str(execution.exit_code if execution.exit_code is not None else 1)))
    return items


def _encoded(channel: str, number: int, kind: str, data: str) -> str:
    return encode(Event(channel, kind, encode_data({"type": kind, "data": data, "phase": "code"}), id=number))


async def _finished_row(execution_id: object) -> Any:
    """The execution's row when it is finished, else None."""
    row = await sync_to_async(
        lambda: Execution.objects.filter(pk=str(execution_id)).first(), thread_sensitive=False
    )()
    return row if row is not None and row.status in FINISHED else None


def _notified(listener: Listener, manager: Any, channel: str, last_id: int) -> tuple[list[Event], bool]:
    """The events that arrived as notifications since the last look, and whether a nudge came.

    They are used as they are only when complete and in order right after
    ``last_id``; anything else (empty list) means "read storage": the library
    drops events past 10 pending per listener. A nudge (an item without an id)
    says the run ended without (all of) its events reaching Redis.
    """
    with manager.lock:
        listener.aevent.clear()
        queued = listener.channel_items.pop(channel, [])
        overflow, listener.overflow = listener.overflow, False
    nudged = any(not item.id for item in queued)
    events: list[Event] = []
    if not overflow:
        for item in queued:
            if not item.id or int(item.id) != last_id + len(events) + 1:
                return [], nudged
            events.append(item)
    return events, nudged


async def stream_events(
    execution_id: object, *, after: int = 0, fresh: bool = False, on_tick: Callable[[], Any] | None = None
) -> AsyncIterator[str]:
    """SSE text for one execution's events after id ``after``, ending after ``exit``.

    The listener is registered before storage is read, so an event published
    in between is either in the read or wakes the listener: none is missed.
    Storage is the source of truth; notifications only say "look again" (or
    carry the next event itself). While the stream is quiet, each keep-alive
    also checks whether the execution finished without an ``exit`` reaching
    Redis; then the stream ends from the history. ``fresh``: the execution was
    just created (POST /execute/stream), so the first check is skipped.
    """
    channel = channel_for(execution_id)
    client = _async_redis()
    _ensure_notifier()
    listener = Listener()
    listener.channels = {channel}
    listener.assign_loop()
    manager = get_listener_manager()
    manager.add_listener(listener)
    last_id = after
    checked_history = fresh
    failing_since: float | None = None
    try:
        yield ": stream-open\n\n"
        while True:
            events, nudged = _notified(listener, manager, channel, last_id)
            if nudged:
                checked_history = False  # the run ended without (all of) its events in Redis
            if not events:
                try:
                    raw = await client.lrange(_key(channel), last_id, last_id + READ_BATCH - 1)
                    failing_since = None
                except (redis.RedisError, OSError) as exc:
                    # Redis hiccup: the stream stays open and reads again shortly;
                    # if the run has finished meanwhile, it ends from the history.
                    logger.warning("reading events of %s failed: %s", channel, exc)
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since >= settings.ISOL8_SSE_KEEPALIVE:
                        row = await _finished_row(execution_id)
                        if row is not None:
                            for text in _numbered(channel, last_id, terminal_events(row)):
                                yield text
                            return
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
            elif not checked_history:
                # Nothing (more) in Redis: a finished run's stream ends now
                # instead of waiting for events that cannot come.
                checked_history = True
                row = await _finished_row(execution_id)
                if row is not None:
                    ending = await _ending(client, channel, row, last_id)
                    if ending is None:
                        continue  # its events reached Redis meanwhile: read them
                    for text in ending:
                        yield text
                    return
            try:
                await asyncio.wait_for(listener.aevent.wait(), timeout=settings.ISOL8_SSE_KEEPALIVE)
            except TimeoutError:
                yield ": keep-alive\n\n"
                checked_history = False
                if on_tick is not None:
                    await on_tick()
    finally:
        manager.remove_listener(listener)


def _numbered(channel: str, last_id: int, items: list[tuple[str, str]]) -> list[str]:
    return [_encoded(channel, last_id + n, kind, data) for n, (kind, data) in enumerate(items, start=1)]


async def _ending(client: redis.asyncio.Redis, channel: str, row: Any, last_id: int) -> list[str] | None:
    """See _stored_ending; with Redis unreachable, how the run ended from the history, numbered on."""
    try:
        return await _stored_ending(client, channel, row, last_id)
    except (redis.RedisError, OSError):
        return _numbered(channel, last_id, terminal_events(row))


async def _stored_ending(client: redis.asyncio.Redis, channel: str, row: Any, last_id: int) -> list[str] | None:
    """What a finished run's stream still sends when Redis had nothing after ``last_id``.

    None: events after ``last_id`` are there now (they arrived while the row
    was read); the stream reads them as usual.

    * Its list is gone (expired after EVENT_RETENTION, or the events Redis lost
      it): a client that has seen nothing gets the run as its history has it,
      numbered 1, 2, ... like a run answered whole; one part-way through gets
      a note that the rest of the live output is gone, and how the run ended.
    * The list ends with ``exit`` and the client has it (or claims to be past
      the end): nothing.
    * The list stops short of ``exit`` (its end was lost): how the run ended,
      from the history, numbered on.
    """
    key = _key(channel)
    length = int(await client.llen(key))
    if length == 0:
        if last_id == 0:
            return _numbered(channel, 0, history_events(row))
        gone = ("error", LIVE_OUTPUT_GONE.format(execution_id=row.pk))
        return _numbered(channel, last_id, [gone, *terminal_events(row)])
    if length > last_id:
        return None
    last = await client.lindex(key, -1)
    if last is not None and _decode(channel, length, last).type == EXIT:
        return []
    return _numbered(channel, last_id, terminal_events(row))


async def replay_finished(execution_id: object, *, after: int = 0) -> AsyncIterator[str]:
    """The events of a run that was answered whole, rebuilt from its history row.

    Such runs publish no live events (that would cost every /execute Redis
    writes for a stream nobody reads), so this waits for the run to finish and
    then sends its output as one stdout and one stderr event, and ``exit``.
    """
    yield ": stream-open\n\n"
    waited = 0.0
    while True:
        row = await _finished_row(execution_id)
        if row is not None:
            break
        await asyncio.sleep(0.5)
        waited += 0.5
        if waited >= settings.ISOL8_SSE_KEEPALIVE:
            waited = 0.0
            yield ": keep-alive\n\n"
    channel = channel_for(execution_id)
    for number, (kind, data) in enumerate(history_events(row), start=1):
        if number > after:
            yield _encoded(channel, number, kind, data)


def stream_for(execution: Any, *, after: int = 0, on_tick: Callable[[], Any] | None = None) -> AsyncIterator[str]:
    """The SSE stream of an execution: live events, or rebuilt from history for runs answered whole."""
    if not execution.streamed:
        return replay_finished(execution.pk, after=after)
    return stream_events(execution.pk, after=after, on_tick=on_tick)


# ------------------------------------------------------------ open-stream caps

STREAM_SLOT = """
local key, now, member, cap, ttl = KEYS[1], tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if cap >= 0 and redis.call('ZCARD', key) >= cap then return 0 end
redis.call('ZADD', key, now + ttl, member)
redis.call('EXPIRE', key, ttl * 2)
return 1
"""


def open_streams() -> list[tuple[list[str], float]]:
    """([tenant], open streams) for every tenant with a stream slot taken now (GET /metrics)."""
    client = get_events_redis()
    now = time.time()
    found = []
    for key in client.scan_iter(match=STREAMS_KEY + "*", count=500):
        name = key.decode() if isinstance(key, bytes) else str(key)
        found.append(([name.removeprefix(STREAMS_KEY)], float(client.zcount(name, now, "+inf"))))
    return found


class StreamSlot:
    """One of a tenant's open streams (at most ISOL8_TENANT_MAX_STREAMS at once).

    Held in a sorted set scored with an expiry that the stream refreshes on
    every keep-alive, so the slot of a web process that died frees itself.
    """

    def __init__(self, tenant_slug: str) -> None:
        self.key = STREAMS_KEY + tenant_slug
        self.member = uuid.uuid4().hex

    def acquire(self) -> None:
        """Take a slot now (the web view, before anything starts); 429 when all are open."""
        cap = settings.ISOL8_TENANT_MAX_STREAMS
        taken = get_events_redis().eval(
            STREAM_SLOT, 1, self.key, time.time(), self.member, -1 if cap is None else cap, STREAM_SLOT_SECONDS
        )
        if not taken:
            metrics.rejected(tenant=self.key.removeprefix(STREAMS_KEY), kind="streams")
            raise QuotaExceeded(f"Quota exceeded: at most {cap} open streams per tenant", retry_after=5)

    async def refresh(self) -> None:
        try:
            await _async_redis().zadd(self.key, {self.member: time.time() + STREAM_SLOT_SECONDS})
        except (redis.RedisError, OSError):
            pass  # the slot expires; a Redis outage must not end the stream

    async def release(self) -> None:
        try:
            await _async_redis().zrem(self.key, self.member)
        except (redis.RedisError, OSError):
            pass


async def held(stream: AsyncIterator[str], slot: StreamSlot) -> AsyncIterator[str]:
    """``stream``, releasing ``slot`` however it ends (finished, client gone, error)."""
    try:
        async for chunk in stream:
            yield chunk
    finally:
        await slot.release()
