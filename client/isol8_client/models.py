"""Typed views of what the server sends back: results, stream events, sessions.

The wire format uses isol8's camelCase JSON; these dataclasses give Python
names and types, and keep the whole JSON object in ``raw`` so fields this
client does not know yet (``resourceUsage``, ``networkLogs``...) stay reachable.
Fields that only this server sends (``status``, ``timedOut``, and a stateful
cell's ``value``, ``outputs``, ``exception``, ``stateLost``) have defaults, so
results from the original isol8 server parse too.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

EventType = Literal["stdout", "stderr", "exit", "error", "display"]
EVENT_TYPES: frozenset[str] = frozenset({"stdout", "stderr", "exit", "error", "display"})

# A MIME bundle: {"text/plain": "43", "image/png": "<base64>", "application/json": {...}, ...}.
MimeBundle = dict[str, Any]


@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of one execution; a non-zero exit code is a result, not an error."""

    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    truncated: bool
    execution_id: str
    runtime: str
    timestamp: str
    status: str = "ok"
    timed_out: bool = False
    # Present (possibly empty) only when the request named outputPaths.
    files: dict[str, bytes] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # A stateful session's cell only: the trailing expression's MIME bundle (None
    # when there is none), the display(...) bundles as {"type": "display", "data":
    # bundle} items in order, the raised exception ({"ename", "evalue",
    # "traceback"}), and whether the interpreter was restarted and lost the
    # variables of earlier cells.
    value: MimeBundle | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    exception: dict[str, Any] | None = None
    state_lost: bool = False

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ExecutionResult:
        """Build a result from the JSON of POST /execute, decoding the base64 files."""
        files = body.get("files") or {}
        return cls(
            stdout=str(body.get("stdout", "")),
            stderr=str(body.get("stderr", "")),
            exit_code=int(body.get("exitCode", 1)),
            duration_ms=int(body.get("durationMs", 0)),
            truncated=bool(body.get("truncated", False)),
            execution_id=str(body.get("executionId", "")),
            runtime=str(body.get("runtime", "")),
            timestamp=str(body.get("timestamp", "")),
            status=str(body.get("status", "ok")),
            timed_out=bool(body.get("timedOut", False)),
            files={path: base64.b64decode(data) for path, data in files.items()},
            raw=dict(body),
            value=_optional_dict(body.get("value")),
            outputs=[item for item in body.get("outputs") or [] if isinstance(item, dict)],
            exception=_optional_dict(body.get("exception")),
            state_lost=bool(body.get("stateLost", False)),
        )


@dataclass(frozen=True)
class StreamEvent:
    """One event of a streamed execution.

    ``data`` is text output for stdout/stderr, the exit code as a string for
    ``exit`` (``"0"``, ``"137"``), a message for ``error``, and for ``display``
    (a stateful cell's display(...) call or figure) the MIME bundle itself, a
    dict. ``phase`` is ``"setup"`` or ``"code"``; isol8 leaves it out of its
    own error events.
    """

    type: EventType
    data: str | MimeBundle
    phase: str | None = None

    @property
    def text(self) -> str:
        """``data`` as text: the string itself, or a display bundle's ``text/plain`` ("" without one)."""
        if isinstance(self.data, str):
            return self.data
        plain = self.data.get("text/plain")
        return plain if isinstance(plain, str) else ""

    @property
    def exit_code(self) -> int | None:
        """The exit code carried by an ``exit`` event, None for other events."""
        if self.type != "exit":
            return None
        try:
            return int(self.text)
        except ValueError:
            return None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> StreamEvent:
        """Build an event from one SSE ``data:`` payload; an unknown type becomes ``error``.

        The stream readers of this package skip unknown types before they get
        here (see :func:`is_known_event`), as the protocol asks clients to.
        """
        kind = str(body.get("type", "error"))
        phase = body.get("phase")
        phase_text = None if phase is None else str(phase)
        if kind == "display":
            return cls(type="display", data=_bundle(body.get("data")), phase=phase_text)
        data = str(body.get("data", ""))
        if kind not in EVENT_TYPES:
            data, kind = f"unknown event type {kind!r}: {data}", "error"
        return cls(type=cast(EventType, kind), data=data, phase=phase_text)


def is_known_event(body: Mapping[str, Any]) -> bool:
    """Whether a stream event's type is one this client knows (a missing type counts as ``error``).

    A newer server may add event types; a client skips the ones it does not know.
    """
    return str(body.get("type", "error")) in EVENT_TYPES


def _bundle(data: object) -> MimeBundle:
    """A display event's MIME bundle; anything but an object is kept as its ``text/plain``."""
    if isinstance(data, dict):
        return dict(data)
    return {} if data is None else {"text/plain": str(data)}


@dataclass(frozen=True)
class SessionInfo:
    """One persistent session of the caller, as GET /sessions lists it."""

    id: str
    is_active: bool
    last_accessed_at: str | None = None
    # Sent by this server, not by the original isol8 one.
    runtime: str | None = None
    created_at: str | None = None
    state: str | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> SessionInfo:
        """Build a session from one entry of ``{"sessions": [...]}``."""
        return cls(
            id=str(body["id"]),
            is_active=bool(body.get("isActive", False)),
            last_accessed_at=_optional_str(body.get("lastAccessedAt")),
            runtime=_optional_str(body.get("runtime")),
            created_at=_optional_str(body.get("createdAt")),
            state=_optional_str(body.get("state")),
        )


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _optional_dict(value: object) -> dict[str, Any] | None:
    return dict(value) if isinstance(value, dict) else None
