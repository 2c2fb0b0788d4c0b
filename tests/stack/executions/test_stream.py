"""POST /execute/stream and GET /executions/{id}/events (api.md "Streaming (SSE)")."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from executions.models import Execution
from sandbox import containers, dockerapi
from tests.conftest import make_key
from tests.sse import SseStream, iter_sse

pytestmark = pytest.mark.stack


def stream(api, request, options=None, *, into=None):
    body = {"request": request}
    if options:
        body["options"] = options
    with api.stream("POST", "/execute/stream", json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        execution_id = response.headers["X-Execution-Id"]
        events = list(iter_sse(response, into))
    return execution_id, events


def payloads(events):
    return [e.json for e in events]


def test_output_arrives_as_it_is_produced_and_ends_with_exit(api):
    code = "import time\nfor i in range(10):\n    print(i, flush=True)\n    time.sleep(0.2)\n"
    started = time.monotonic()
    _, events = stream(api, {"runtime": "python", "code": code})
    data = payloads(events)
    assert data[-1] == {"type": "exit", "data": "0", "phase": "code"}
    stdout = [e for e in events if e.json["type"] == "stdout"]
    assert "".join(e.json["data"] for e in stdout) == "".join(f"{i}\n" for i in range(10))
    # Spread over time: the first line long before the end, not all at once.
    assert stdout[0].at - started < events[-1].at - started - 1.0
    assert len(stdout) >= 5


def test_every_event_has_an_id_and_isol8_wire_format(api):
    wire = SseStream()
    _, events = stream(api, {"runtime": "bash", "code": "echo a; echo b >&2"}, into=wire)
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
    for line in wire.data_lines:
        assert line.startswith("data: ")  # isol8 clients read only "data: " lines
        obj = json.loads(line[6:])
        assert obj["type"] in ("stdout", "stderr", "exit", "error") and isinstance(obj["data"], str)
    assert [p["type"] for p in payloads(events)][-1] == "exit"


def test_fifty_thousand_lines_arrive_complete_and_in_order(api):
    code = (
        "import sys\n"
        "for i in range(50000):\n"
        "    (sys.stdout if i % 2 == 0 else sys.stderr).write(f'{i}\\n')\n"
    )
    execution_id, events = stream(api, {"runtime": "python", "code": code}, {"maxOutputSize": 8 * 1024 * 1024})
    out = "".join(p["data"] for p in payloads(events) if p["type"] == "stdout")
    err = "".join(p["data"] for p in payloads(events) if p["type"] == "stderr")
    assert out.split() == [str(i) for i in range(0, 50000, 2)]
    assert err.split() == [str(i) for i in range(1, 50000, 2)]
    assert len(events) < 25000  # coalesced, not one event per line
    row = Execution.objects.get(pk=execution_id)  # history keeps the complete output
    assert row.stdout == out and row.stderr == err


def test_resume_with_last_event_id_during_and_after_the_run(api):
    code = "import time\nfor i in range(6):\n    print(i, flush=True)\n    time.sleep(0.3)\n"
    with api.stream("POST", "/execute/stream", json={"request": {"runtime": "python", "code": code}}) as r:
        execution_id = r.headers["X-Execution-Id"]
        first = []
        for event in iter_sse(r):
            first.append(event)
            if len(first) == 2:
                break  # disconnect mid-run
    headers = {"Last-Event-ID": first[-1].id}
    with api.stream("GET", f"/executions/{execution_id}/events", headers=headers) as r:
        rest = list(iter_sse(r))
    ids = [int(e.id) for e in first + rest]
    assert ids == list(range(1, len(ids) + 1))  # nothing missed, nothing twice
    assert "".join(p["data"] for p in payloads(first + rest) if p["type"] == "stdout") == "0\n1\n2\n3\n4\n5\n"
    assert rest[-1].json["type"] == "exit"
    # Again after the run ended, with the query parameter form.
    with api.stream("GET", f"/executions/{execution_id}/events", params={"lastEventId": first[0].id}) as r:
        again = list(iter_sse(r))
    assert [e.id for e in again] == [e.id for e in first[1:] + rest]


def test_a_client_that_goes_away_does_not_stop_the_run(api):
    code = "import time\nprint('start', flush=True)\ntime.sleep(1.5)\nprint('end')\n"
    with api.stream("POST", "/execute/stream", json={"request": {"runtime": "python", "code": code}}) as r:
        execution_id = r.headers["X-Execution-Id"]
        next(iter_sse(r))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = api.get(f"/executions/{execution_id}").json()
        if record["status"] != "running" and record["status"] != "queued":
            break
        time.sleep(0.2)
    assert record["status"] == "ok"
    assert record["stdout"] == "start\nend"


def test_timeout_gives_error_then_exit_137(api):
    _, events = stream(api, {"runtime": "bash", "code": "echo hi; sleep 30", "timeoutMs": 700})
    data = payloads(events)
    assert data[0] == {"type": "stdout", "data": "hi\n", "phase": "code"}
    assert data[-2:] == [
        {"type": "error", "data": "EXECUTION TIMED OUT", "phase": "code"},
        {"type": "exit", "data": "137", "phase": "code"},
    ]


def test_truncation_marker_is_sent_once_and_output_then_dropped(api):
    code = "import sys\nfor i in range(50):\n    print('y' * 100, flush=True)\n"
    _, events = stream(api, {"runtime": "python", "code": code}, {"maxOutputSize": 1000})
    out = "".join(p["data"] for p in payloads(events) if p["type"] == "stdout")
    assert out.count("--- OUTPUT TRUNCATED") == 1
    assert out.index("--- OUTPUT TRUNCATED") >= 1000
    assert len(out) < 1200


def test_errors_known_before_running_are_json_not_a_stream(api, stack):
    response = api.post("/execute/stream", json={"request": {"runtime": "cobol", "code": "x"}})
    assert response.status_code == 400
    assert response.json()["code"] == "unsupported_runtime"
    response = httpx.post(f"{stack.url}/execute/stream", json={"request": {"runtime": "bash", "code": "x"}})
    assert response.status_code == 401 and response.json()["code"] == "unauthorized"


def test_another_tenants_stream_is_404_before_any_byte(api, stack):
    from tenants.services import tenant_create

    execution_id, _ = stream(api, {"runtime": "bash", "code": "echo mine"})
    other = tenant_create(slug="other-tenant-stream")
    with stack.client(make_key(other)) as them:
        response = them.get(f"/executions/{execution_id}/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert httpx.get(f"{stack.url}/executions/{execution_id}/events").status_code == 401


def test_cancel_kills_a_long_run_quickly_and_leaves_no_container(api, stack):
    with api.stream("POST", "/execute/stream",
                    json={"request": {"runtime": "bash", "code": "echo go; sleep 600"}}) as r:
        execution_id = r.headers["X-Execution-Id"]
        events = iter_sse(r)
        assert next(events).json["data"] == "go\n"
        asked = time.monotonic()
        assert api.post(f"/executions/{execution_id}/cancel").json()["ok"] is True
        rest = list(events)
        took = time.monotonic() - asked
    assert took < 2.0
    assert rest[-1].json == {"type": "exit", "data": "137", "phase": "code"}
    assert any(e.json["type"] == "error" for e in rest)
    row = Execution.objects.get(pk=execution_id)
    assert row.status == "cancelled"
    # The container is gone or reset: no process of the run is left anywhere.
    for container in containers.list_managed(host=stack.env["ISOL8_WORKER_HOST"]):
        if containers.container_running(container.id):
            top = dockerapi.client().api.top(container.id, ps_args="-eo pid,user,args")
            assert not any("sleep 600" in " ".join(p) for p in top.get("Processes") or [])


def test_events_of_a_run_answered_whole_can_be_replayed(api):
    body = api.post("/execute", json={"request": {"runtime": "bash", "code": "echo whole"}}).json()
    with api.stream("GET", f"/executions/{body['executionId']}/events") as r:
        events = payloads(iter_sse(r))
    assert events[0] == {"type": "stdout", "data": "whole\n", "phase": "code"}
    assert events[-1]["type"] == "exit"


@pytest.mark.slow
def test_a_program_silent_for_forty_seconds_keeps_its_stream(api):
    wire = SseStream()
    _, events = stream(api, {"runtime": "bash", "code": "sleep 40; echo done", "timeoutMs": 60000}, into=wire)
    assert payloads(events) == [
        {"type": "stdout", "data": "done\n", "phase": "code"},
        {"type": "exit", "data": "0", "phase": "code"},
    ]
    assert sum("keep-alive" in c for c in wire.comments) >= 2
