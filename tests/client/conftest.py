"""Helpers for the client tests: a mock server for unit tests, the `isol8` command for stack tests.

The unit tests talk to ``httpx.MockTransport`` (one layer, no network); the
stack tests run the real ``isol8`` console script as a subprocess against the
``stack`` fixture of tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ISOL8 = Path(sys.executable).parent / "isol8"
ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "network: needs PyPI (skipped when ISOL8_TEST_OFFLINE=1)"
    )


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


@dataclass
class Run:
    """The outcome of one `isol8` command."""

    returncode: int
    stdout: str
    stderr: str


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for the `isol8` subprocess, without the test run's own ISOL8_* settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("ISOL8_API_KEY", "ISOL8_HOST")}
    return env | extra


def isol8(*args: str, env: dict[str, str] | None = None, input: str | None = None,
          cwd: Path | None = None, timeout: float = 120) -> Run:
    """Run the installed `isol8` console script and capture what it printed."""
    proc = subprocess.run(
        [str(ISOL8), *args], env=env if env is not None else cli_env(), input=input,
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)
