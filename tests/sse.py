"""A small SSE reader for tests: events with their id, type, data and arrival time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: str
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.data))


@dataclass
class SseStream:
    events: list[SseEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    data_lines: list[str] = field(default_factory=list)  # every raw "data:" line, for wire checks


def iter_sse(response: httpx.Response, into: SseStream | None = None) -> Iterator[SseEvent]:
    """Parse an SSE response as it arrives (comments and raw data lines recorded in ``into``)."""
    into = into or SseStream()
    event_id: str | None = None
    event_type: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data:
                event = SseEvent(id=event_id, event=event_type, data="\n".join(data))
                into.events.append(event)
                yield event
            event_id, event_type, data = None, None, []
        elif line.startswith(":"):
            into.comments.append(line)
        elif line.startswith("data:"):
            into.data_lines.append(line)
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("event:"):
            event_type = line[6:].strip()
