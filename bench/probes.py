"""One run of the program along each measured path, checked before it counts.

Paths: a host process, a bare ``docker exec`` into a running hardened container
(the baseline), ``POST /execute`` one-shot and in a session, and the first
``stdout`` event of ``POST /execute/stream``.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from websockets.sync.client import connect as ws_connect

from bench.measure import Probe, ProbeError, Timing
from bench.programs import EXPECTED_STDOUT
from sandbox import containers, dockerapi

HTTP_TIMEOUT = 120.0


def check_output(stdout: str, exit_code: object) -> None:
    if str(exit_code) != "0":
        raise ProbeError(f"exit code {exit_code!r}, stdout {stdout[:100]!r}")
    if stdout.strip() != EXPECTED_STDOUT:
        raise ProbeError(f"stdout {stdout[:100]!r}, expected {EXPECTED_STDOUT!r}")


# ------------------------------------------------------------------ host process


@contextmanager
def host_process(argv: list[str]) -> Iterator[Probe]:
    """The floor: the program started as a plain host process."""

    def probe() -> Timing:
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        elapsed = (time.perf_counter() - start) * 1000
        check_output(done.stdout, done.returncode)
        return Timing(elapsed)

    yield probe


# ---------------------------------------------------------------- bare exec_run


@contextmanager
def exec_run(container_id: str, argv: list[str]) -> Iterator[Probe]:
    """The baseline: ``docker exec`` of the program as the code user, nothing else.

    ``dockerapi.client()`` is per thread, so each concurrent client here has its
    own connection to the engine, as the worker's threads do.
    """
    container = dockerapi.client().containers.get(container_id)
    user = f"{container.labels[containers.LABEL_UID]}:{container.labels[containers.LABEL_UID]}"

    def probe() -> Timing:
        start = time.perf_counter()
        result = container.exec_run(argv, user=user)
        elapsed = (time.perf_counter() - start) * 1000
        check_output(result.output.decode(errors="replace"), result.exit_code)
        return Timing(elapsed)

    yield probe


# -------------------------------------------------------------------- the API


def execute_body(runtime: str, code: str, session_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"request": {"runtime": runtime, "code": code}}
    if session_id:
        body["sessionId"] = session_id
    return body


def api_client(url: str, key: str) -> httpx.Client:
    """One keep-alive connection per benchmark client, as a real client library holds."""
    return httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=HTTP_TIMEOUT
    )


def describe(response: httpx.Response) -> str:
    return f"HTTP {response.status_code}: {response.text[:200]}"


def check_result(response: httpx.Response) -> dict[str, Any]:
    """The result object of a 200 whose program printed the expected line."""
    if response.status_code != 200:
        raise ProbeError(describe(response))
    result = dict(response.json())
    if result.get("status") != "ok":
        raise ProbeError(f"status {result.get('status')!r}: {json.dumps(result)[:200]}")
    check_output(str(result.get("stdout", "")), result.get("exitCode"))
    return result


@contextmanager
def execute(url: str, key: str, body: dict[str, Any]) -> Iterator[Probe]:
    """``POST /execute``: the end-to-end latency, and the run's own ``durationMs``."""
    with api_client(url, key) as client:

        def probe() -> Timing:
            start = time.perf_counter()
            response = client.post("/execute", json=body)
            elapsed = (time.perf_counter() - start) * 1000
            result = check_result(response)
            return Timing(elapsed, float(result["durationMs"]))

        yield probe


def sessions_available(url: str, key: str, body: dict[str, Any]) -> bool:
    """Whether the server takes ``sessionId`` (servers without sessions answer 400 or 403)."""
    try:
        with api_client(url, key) as client:
            response = client.post("/execute", json=body)
    except httpx.HTTPError:
        return True  # not a refusal: let the measurement count the failures
    return response.status_code not in (400, 403)


def delete_session(url: str, key: str, session_id: str) -> None:
    """Leave no session container behind on the server."""
    try:
        with api_client(url, key) as client:
            client.delete(f"/session/{session_id}")
    except httpx.HTTPError:
        pass  # the server's idle-session pruning removes it eventually


def server_healthy(url: str) -> str | None:
    """None when ``GET /health`` answers 200, else why not."""
    try:
        response = httpx.get(f"{url}/health", timeout=10)
    except httpx.HTTPError as exc:
        return str(exc)
    return None if response.status_code == 200 else describe(response)


@contextmanager
def stream_first_stdout(url: str, key: str, body: dict[str, Any]) -> Iterator[Probe]:
    """``POST /execute/stream``: time from sending the request to the first ``stdout`` event.

    The whole stream is still read to its ``exit`` event and checked, so a run
    that printed early and then failed does not count.
    """
    with api_client(url, key) as client:

        def probe() -> Timing:
            start = time.perf_counter()
            with client.stream("POST", "/execute/stream", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise ProbeError(describe(response))
                first, stdout, exit_code = read_events(response)
            if first is None:
                raise ProbeError(f"no stdout event (exit {exit_code!r})")
            check_output(stdout, exit_code)
            return Timing((first - start) * 1000)

        yield probe


@contextmanager
def websocket_first_stdout(url: str, key: str, body: dict[str, Any]) -> Iterator[Probe]:
    """``GET /execute/ws`` (a new connection per run, as isol8's client makes): from sending the
    ``execute`` message to the first ``stdout`` message; read to ``exit`` and checked like the SSE figure.
    """
    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/execute/ws"
    message = json.dumps({"type": "execute", **body})

    def probe() -> Timing:
        with ws_connect(ws_url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=30) as ws:
            start = time.perf_counter()
            ws.send(message)
            first: float | None = None
            stdout: list[str] = []
            for raw in ws:
                event = json.loads(raw)
                kind = event.get("type")
                if kind == "stdout":
                    first = first or time.perf_counter()
                    stdout.append(str(event.get("data", "")))
                elif kind == "error":
                    raise ProbeError(f"error message: {str(event.get('data'))[:200]}")
                elif kind == "exit":
                    if first is None:
                        raise ProbeError(f"no stdout message (exit {event.get('data')!r})")
                    check_output("".join(stdout), str(event.get("data")))
                    return Timing((first - start) * 1000)
        raise ProbeError("the socket closed without an exit message")

    yield probe


def read_events(response: httpx.Response) -> tuple[float | None, str, str | None]:
    """Read SSE ``data:`` lines up to ``exit``: first stdout time, all stdout, exit code.

    The reading stops at ``exit`` instead of waiting for the server to close
    the stream, so a server that kept it open could not stall the benchmark.
    """
    first: float | None = None
    stdout: list[str] = []
    errors: list[str] = []
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        event = json.loads(line[len("data:") :])
        kind = event.get("type")
        if kind == "stdout":
            if first is None:
                first = time.perf_counter()
            stdout.append(str(event.get("data", "")))
        elif kind == "error":
            errors.append(str(event.get("data", "")))
        elif kind == "exit":
            if errors:
                raise ProbeError(f"error event: {'; '.join(errors)[:200]}")
            return first, "".join(stdout), str(event.get("data"))
    raise ProbeError("the stream ended without an exit event")


@contextmanager
def baseline_container(*, runtime: str, host_label: str) -> Iterator[str]:
    """A started hardened container of the runtime's image, exactly as the service configures one.

    ``mode="exec"`` gives the container a sleeping keep-alive process as its
    main process, so every run is a bare ``docker exec``. It is removed on exit.
    """
    from django.conf import settings

    config = containers.hardened_config(
        runtime=runtime,
        limits=settings.SANDBOX.default_limits,
        labels={containers.LABEL_HOST: host_label, containers.LABEL_RUNTIME: runtime},
        mode="exec",
        uid=containers.uids().allocate(),
    )
    container = dockerapi.client().containers.create(**config)
    try:
        container.start()
        yield str(container.id)
    finally:
        containers.remove_container(container.id)
