"""The mock server of the client's unit tests: ``httpx.MockTransport``, one layer, no network."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest


@dataclass
class MockServer:
    """A scripted server: ``routes[(method, path)]`` answers, every request recorded."""

    routes: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def route(self, method: str, path: str, *responses: httpx.Response) -> None:
        """Answer with ``responses`` in turn, repeating the last one."""
        queue = list(responses)

        def answer(request: httpx.Request) -> httpx.Response:
            return queue.pop(0) if len(queue) > 1 else queue[0]

        self.routes[(method, path)] = answer

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.routes.get((request.method, request.url.path))
        if answer is None:
            return httpx.Response(404, json={"error": "Not found", "code": "not_found"})
        return answer(request)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def bodies(self, path: str) -> list[Any]:
        return [json.loads(r.content) for r in self.requests if r.url.path == path and r.content]

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


@pytest.fixture
def server() -> MockServer:
    return MockServer()


def result_json(**overrides: Any) -> dict[str, Any]:
    """A POST /execute answer as this server sends it."""
    body: dict[str, Any] = {
        "stdout": "hello", "stderr": "", "exitCode": 0, "durationMs": 12, "truncated": False,
        "executionId": "e-1", "runtime": "python", "timestamp": "2025-01-01T00:00:00Z",
        "status": "ok", "timedOut": False,
    }
    return body | overrides


def sse(*events: dict[str, Any]) -> bytes:
    """An SSE body with ids and a keep-alive comment, as this server frames it."""
    frames = [": keep-alive\n\n"]
    frames += [f"id: {i}\nevent: message\ndata: {json.dumps(e)}\n\n" for i, e in enumerate(events, 1)]
    return "".join(frames).encode()
