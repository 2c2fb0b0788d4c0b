"""What standard clients send, through clients we did not write (issue 12).

curl with the headers real clients send, httpx-sse (a standard SSE client
library), the websockets library for the WebSocket handshake, and the error
paths of DRF with bodies a person can read.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from httpx_sse import connect_sse
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tenants.models import Tenant
from tests.conftest import make_key, one_mode, run
from tests.stack.service.test_quotas import peak_overlap

pytestmark = [pytest.mark.stack, one_mode]

ADMITTED = [
    None,
    "text/event-stream",
    "text/*",
    "*/*",
    "text/event-stream; q=0.5, application/json; q=0.9",
    "application/json, text/event-stream",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",  # a browser's navigation
    "TEXT/EVENT-STREAM",
]
EXCLUDED = ["application/json", "text/html", "text/event-stream;q=0, */*", "image/png;q=1"]
PYTHON_LINES = {"runtime": "python", "code": "for i in range(3): print(i)"}


def assert_readable_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code
    text = body["error"]
    assert isinstance(text, str) and len(text) > 10
    for repr_mark in ("ErrorDetail", "{'", "[{", "Traceback"):
        assert repr_mark not in response.text, response.text
    return body


def sse_events(response: httpx.Response) -> list[dict]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
    return events


@pytest.mark.parametrize("accept", ADMITTED)
def test_both_stream_routes_answer_every_accept_that_admits_event_streams(api, accept):
    headers = {"Accept": accept} if accept is not None else {}
    with api.stream("POST", "/execute/stream", json={"request": PYTHON_LINES}, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        execution_id = response.headers["X-Execution-Id"]
        events = sse_events(response)
    assert "".join(e["data"] for e in events if e["type"] == "stdout") == "0\n1\n2\n"
    with api.stream("GET", f"/executions/{execution_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert sse_events(response) == events


@pytest.mark.parametrize("accept", EXCLUDED)
def test_an_accept_that_excludes_event_streams_is_406_with_a_sentence(api, accept):
    response = api.post("/execute/stream", json={"request": PYTHON_LINES}, headers={"Accept": accept})
    body = assert_readable_error(response, 406, "not_acceptable")
    assert "text/event-stream" in body["error"]
    execution_id = run(api, PYTHON_LINES).json()["executionId"]
    response = api.get(f"/executions/{execution_id}/events", headers={"Accept": accept})
    assert_readable_error(response, 406, "not_acceptable")


def test_json_routes_answer_json_whatever_the_accept(api):
    for accept in ("text/html", "text/plain", "application/xml", "*/*"):
        response = api.post("/execute", json={"request": PYTHON_LINES}, headers={"Accept": accept})
        assert response.status_code == 200 and response.json()["stdout"] == "0\n1\n2"
        assert api.get("/health", headers={"Accept": accept}).json()["status"] == "ok"


def test_httpx_sse_reads_both_stream_routes(api):
    with connect_sse(api, "POST", "/execute/stream", json={"request": PYTHON_LINES}) as source:
        assert source.response.request.headers["accept"] == "text/event-stream"
        execution_id = source.response.headers["X-Execution-Id"]
        first = [(sse.event, sse.id, sse.json()) for sse in source.iter_sse()]
    assert first[-1][0] == "exit" and first[-1][2] == {"type": "exit", "data": "0", "phase": "code"}
    with connect_sse(api, "GET", f"/executions/{execution_id}/events", headers={"Last-Event-ID": "1"}) as source:
        resumed = [(sse.event, sse.id, sse.json()) for sse in source.iter_sse()]
    assert resumed == first[1:]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_documented_curl_streams_with_the_fields_at_the_top_level(stack, api_key):
    # isol8's README, as pasted: no "request" wrapper, no Accept, -N.
    result = subprocess.run(
        ["curl", "-sN", "-X", "POST", f"{stack.url}/execute/stream",
         "-H", f"Authorization: Bearer {api_key}", "-H", "Content-Type: application/json",
         "-d", '{"code":"for i in range(5): print(i)","runtime":"python"}'],
        capture_output=True, text=True, timeout=60, check=True,
    )
    data = [json.loads(line[6:]) for line in result.stdout.splitlines() if line.startswith("data: ")]
    assert "".join(e["data"] for e in data if e["type"] == "stdout") == "0\n1\n2\n3\n4\n"
    assert data[-1] == {"type": "exit", "data": "0", "phase": "code"}
    # What an EventSource library sends, with curl.
    result = subprocess.run(
        ["curl", "-sN", "-X", "POST", f"{stack.url}/execute/stream",
         "-H", f"Authorization: Bearer {api_key}", "-H", "Content-Type: application/json",
         "-H", "Accept: text/event-stream", "-H", "Cache-Control: no-cache",
         "-d", '{"request":{"code":"echo hi","runtime":"bash"}}', "-w", "\n%{http_code}"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert result.stdout.rstrip().endswith("200") and '"data":"hi\\n"' in result.stdout


def test_top_level_request_fields_work_on_execute_and_mixing_the_forms_is_400(api):
    body = {"runtime": "bash", "code": "echo $X; cat", "env": {"X": "top"}, "stdin": "in",
            "options": {"timeoutMs": 5000}}
    result = api.post("/execute", json=body).json()
    assert result["stdout"] == "top\nin" and result["status"] == "ok"
    mixed = api.post("/execute", json={"request": {"runtime": "bash", "code": "true"}, "code": "x"})
    assert "not both" in assert_readable_error(mixed, 400, "validation_error")["error"]
    mixed = api.post("/execute/stream", json={"request": {"runtime": "bash", "code": "true"}, "runtime": "bash"})
    assert_readable_error(mixed, 400, "validation_error")


def test_every_error_path_answers_the_documented_json_with_a_sentence(stack, api):
    assert_readable_error(api.get("/execute/stream"), 405, "method_not_allowed")
    assert_readable_error(api.put("/execute"), 405, "method_not_allowed")
    assert_readable_error(
        api.post("/execute", content=b"{}", headers={"Content-Type": "text/xml"}), 415, "unsupported_media_type"
    )
    assert_readable_error(
        api.post("/execute", content=b'{"request": ', headers={"Content-Type": "application/json"}),
        400, "invalid_json",
    )
    assert_readable_error(api.post("/cleanup"), 403, "forbidden")
    assert_readable_error(api.get("/executions/00000000-0000-0000-0000-000000000000"), 404, "not_found")
    assert_readable_error(api.get("/no/such/route"), 404, "not_found")
    with stack.client() as anonymous:
        assert_readable_error(anonymous.post("/execute", json={"request": PYTHON_LINES}), 401, "unauthorized")
    with stack.client("isol8_" + "0" * 64) as wrong:
        assert_readable_error(wrong.get("/sessions"), 401, "unauthorized")
    assert_readable_error(
        api.post("/execute", json={"request": {"runtime": "cobol", "code": "x"}}), 400, "unsupported_runtime"
    )


def test_the_master_key_runs_300_executions_within_a_minute_and_10_at_once(stack, transactional_db):
    master = stack.env["ISOL8_API_KEY"]
    def one(_: int) -> httpx.Response:
        with stack.client(master) as api:
            return run(api, {"runtime": "bash", "code": "echo ok"})

    started = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(one, range(300)))
    elapsed = time.monotonic() - started
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 300, {s: statuses.count(s) for s in set(statuses)}
    assert all(r.json()["stdout"] == "ok" for r in responses)
    assert elapsed < 60, elapsed
    default = Tenant.objects.get(slug="default")  # made by the master key's first request
    assert (default.max_concurrent, default.max_per_minute, default.max_sessions, default.monthly_seconds) == (
        None, None, None, None)
    assert default.allow_installs

    def slow(_: int) -> httpx.Response:
        with stack.client(master) as api:
            return run(api, {"runtime": "bash", "code": "date +%s.%N; sleep 2; date +%s.%N"})

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(slow, range(10)))
    assert [r.status_code for r in responses] == [200] * 10
    assert peak_overlap(responses) == 10


def test_new_tenants_keep_the_conservative_defaults_and_blank_quotas_mean_no_limit(stack, tenant):
    assert (tenant.max_concurrent, tenant.max_per_minute, tenant.max_sessions) == (5, 120, 20)
    tenant.max_per_minute = None
    tenant.max_concurrent = None
    tenant.save()
    key = make_key(tenant)

    def one(_: int) -> int:
        with stack.client(key) as api:
            return run(api, {"runtime": "bash", "code": "true"}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(130))) == {200}


@pytest.mark.parametrize("path", ["/execute/wss", "/nope", "/"])
def test_a_websocket_handshake_on_a_path_without_a_websocket_route_is_refused_cleanly(stack, api_key, path):
    url = stack.url.replace("http://", "ws://") + path
    headers = {"Authorization": f"Bearer {api_key}"}
    with pytest.raises(InvalidStatus) as refused, ws_connect(url, additional_headers=headers, open_timeout=10):
        pass
    response = refused.value.response
    assert response.status_code == 404
    assert json.loads(response.body) == {"error": f"No WebSocket route for {path}", "code": "not_found"}
    log = (stack.log_dir / f"web-{stack.mode}.log").read_text()
    assert "Exception in ASGI application" not in log
