"""Accepted runs through the fake worker: results, domain errors, queues, quotas, sessions, streams."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import kombu.exceptions
import pytest

from executions.models import Execution, Status
from executions.services import execution_spec
from isol8_site import dispatch
from sandbox.spec import RunResult
from sessions_app.models import Session, SessionState
from tenants import quotas
from tests.api.conftest import assert_error, assert_nothing_started, make_session, ok_result

PY = {"runtime": "python", "code": "print(1)"}


def execute(api, body: dict[str, Any] | None = None, **extra: Any):
    return api.post("/execute", body or {"request": PY}, format="json", **extra)


# ------------------------------------------------------------- whole results


def test_execute_returns_the_workers_result_and_finishes_the_row(api, fake_dispatch, tenant):
    fake_dispatch.answer_runs(RunResult(status="ok", exit_code=3, stdout="out  \n", stderr="err\n",
                                        stdout_total=6, stderr_total=4, duration_ms=42))
    response = execute(api, {"request": {**PY, "stdin": "in", "env": {"A": "1"}}})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    execution_id = body.pop("executionId")
    assert body.pop("timestamp").endswith("Z")
    assert body == {"stdout": "out", "stderr": "err", "exitCode": 3, "durationMs": 42, "truncated": False,
                    "runtime": "python", "status": "ok", "timedOut": False}
    row = Execution.objects.get(pk=execution_id)
    assert (row.tenant, row.status, row.exit_code, row.stdout) == (tenant, Status.OK, 3, "out  \n")
    assert row.started_at is not None and row.finished_at is not None
    assert row.request["stdin"] == "in" and row.request["env"] == {"A": "1"}
    assert quotas.tenant_usage(tenant=tenant).running == 0


def test_execute_sends_the_run_to_the_shared_run_queue(api, fake_dispatch, settings):
    response = execute(api)
    assert response.status_code == 200, response.content
    assert [(s.name, s.args, s.queue) for s in fake_dispatch.sent] == [
        (dispatch.RUN_EXECUTION, (response.json()["executionId"],), None)
    ]
    # None is the shared queue: dispatch.send's default.
    assert settings.ISOL8_RUN_QUEUE.startswith("isol8.run.")


def test_execute_accepts_the_top_level_shorthand(api, fake_dispatch):
    response = api.post("/execute", {"runtime": "bash", "code": "echo hi"}, format="json")
    assert response.status_code == 200, response.content
    assert Execution.objects.get(pk=response.json()["executionId"]).runtime == "bash"


def test_execute_returns_output_files_only_when_asked(api, fake_dispatch):
    fake_dispatch.answer_runs(dataclasses.replace(ok_result(), files={"/sandbox/out.txt": "aGk="}))
    with_paths = execute(api, {"request": {**PY, "outputPaths": ["out.txt"]}}).json()
    assert with_paths["files"] == {"/sandbox/out.txt": "aGk="}
    assert "files" not in execute(api).json()


def test_execute_reports_a_timeout_as_a_200_result(api, fake_dispatch):
    fake_dispatch.answer_runs(RunResult(status="timeout", exit_code=137, stdout="partial", timed_out=True))
    response = execute(api)
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["exitCode"], body["timedOut"]) == ("timeout", 137, True)
    assert body["stderr"].endswith("--- EXECUTION TIMED OUT ---") and body["stdout"] == "partial"


def test_secrets_reach_redis_not_the_database(api, fake_dispatch):
    seen = {}

    def worker_reads_secrets(claimed: Execution) -> RunResult:
        spec, _ = execution_spec(execution=claimed)
        seen.update(spec.secrets)
        return ok_result()

    fake_dispatch.answer_runs(worker_reads_secrets)
    response = execute(api, {"request": PY, "options": {"secrets": {"TOKEN": "s3cr3t-value"}}})
    assert response.status_code == 200, response.content
    assert seen == {"TOKEN": "s3cr3t-value"}
    row = Execution.objects.get(pk=response.json()["executionId"])
    assert "s3cr3t-value" not in str(row.request) and row.request["secretNames"] == ["TOKEN"]


@pytest.mark.parametrize(
    ("result", "status", "code", "mentions"),
    [
        (RunResult(status="error", exit_code=2, stderr="apt: not found\n", setup_failed=True), 422, "setup_failed",
         "Setup script failed (exit code 2): apt: not found"),
        (RunResult(status="error", error="Could not install requests (exit code 1)", error_code="install_failed"),
         422, "install_failed", "Could not install requests"),
        (RunResult(status="error", error="The sandbox engine is unreachable; try again",
                   error_code="docker_unavailable"), 503, "unavailable", "try again"),
    ],
)
def test_a_run_that_ends_in_a_domain_error_is_answered_with_it(api, fake_dispatch, tenant, result, status, code,
                                                                mentions):
    fake_dispatch.answer_runs(result)
    response = execute(api, {"request": {**PY, "setupScript": "apt install x"}})
    assert_error(response, status, code, mentions)
    assert len(fake_dispatch.runs()) == 1
    assert quotas.tenant_usage(tenant=tenant).running == 0


def test_docker_unavailable_says_when_to_retry(api, fake_dispatch):
    # api.md: no capacity (Docker down) is 503 + Retry-After.
    fake_dispatch.answer_runs(RunResult(status="error", error="The sandbox engine is unreachable; try again",
                                        error_code="docker_unavailable"))
    response = execute(api)
    assert_error(response, 503, "unavailable")
    assert "Retry-After" in response, dict(response.headers)
    assert int(response["Retry-After"]) >= 1


def test_a_run_nobody_picks_up_is_503_and_failed(api, fake_dispatch, tenant, settings):
    fake_dispatch.answer_runs(None)
    settings.ISOL8_QUEUE_TIMEOUT = 0
    settings.ISOL8_RESULT_GRACE = 0
    response = execute(api, {"request": {**PY, "timeoutMs": 300}})
    assert_error(response, 503, "unavailable", "try again")
    assert int(response["Retry-After"]) >= 1
    row = Execution.objects.get()
    assert row.status == Status.ERROR and row.started_at is None
    assert quotas.tenant_usage(tenant=tenant).running == 0


def test_broker_unreachable_is_503_and_the_row_failed(api, fake_dispatch, tenant):
    def broker_down(execution_id: str) -> None:
        raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    fake_dispatch.handlers[dispatch.RUN_EXECUTION] = broker_down
    response = execute(api)
    body = assert_error(response, 503, "unavailable", "try again")
    assert "6379" not in body["error"] and "refused" not in body["error"]
    row = Execution.objects.get()
    assert row.status == Status.ERROR
    assert quotas.tenant_usage(tenant=tenant).running == 0


# -------------------------------------------------------------------- quotas


def test_tenant_at_max_concurrent_is_429_with_retry_after(api, fake_dispatch, tenant):
    tenant.max_concurrent = 1
    tenant.save()
    quotas.acquire(tenant=tenant, execution_id="held-elsewhere", hold_seconds=60)
    response = execute(api)
    assert_error(response, 429, "quota_exceeded", "1 concurrent")
    assert int(response["Retry-After"]) >= 1
    assert_nothing_started(fake_dispatch)
    quotas.release(tenant_slug=tenant.slug, execution_id="held-elsewhere")
    assert execute(api).status_code == 200


def test_a_finished_run_frees_its_concurrency_slot(api, fake_dispatch, tenant):
    tenant.max_concurrent = 1
    tenant.save()
    for _ in range(3):
        assert execute(api).status_code == 200
    assert quotas.tenant_usage(tenant=tenant).running == 0
    assert len(fake_dispatch.runs()) == 3


def test_a_refused_run_frees_its_concurrency_slot(api, fake_dispatch, tenant):
    tenant.max_concurrent = 1
    tenant.save()
    make_session(tenant, "busy", busy_execution=uuid.uuid4())
    assert_error(execute(api, {"request": PY, "sessionId": "busy"}), 409, "session_busy")
    assert execute(api).status_code == 200


def test_rate_quota_is_429_with_retry_after(api, fake_dispatch, tenant):
    tenant.max_per_minute = 2
    tenant.save()
    assert execute(api).status_code == 200
    assert execute(api).status_code == 200
    response = execute(api)
    assert_error(response, 429, "quota_exceeded", "per minute")
    assert 1 <= int(response["Retry-After"]) <= 60
    assert len(fake_dispatch.runs()) == 2


def test_monthly_budget_used_up_is_429(api, fake_dispatch, tenant):
    tenant.monthly_seconds = 1
    tenant.save()
    fake_dispatch.answer_runs(dataclasses.replace(ok_result(), duration_ms=1500))
    assert execute(api).status_code == 200
    response = execute(api)
    assert_error(response, 429, "quota_exceeded", "monthly")
    assert int(response["Retry-After"]) >= 1


def test_server_at_capacity_with_a_full_line_is_503(api, fake_dispatch, tenant, settings):
    settings.ISOL8_CONFIG = dataclasses.replace(settings.ISOL8_CONFIG, max_concurrent=0)
    settings.ISOL8_MAX_QUEUE_DEPTH = 0
    response = execute(api)
    assert_error(response, 503, "unavailable", "capacity")
    assert int(response["Retry-After"]) >= 1
    assert_nothing_started(fake_dispatch, tenant=tenant)


# ------------------------------------------------------------------ sessions


def in_session(api, session_id: str, request: dict[str, Any] | None = None, options: dict[str, Any] | None = None):
    body: dict[str, Any] = {"request": request or PY, "sessionId": session_id}
    if options is not None:
        body["options"] = options
    return api.post("/execute", body, format="json")


def test_a_session_run_is_sent_to_its_hosts_queue(api, fake_dispatch, tenant):
    session = make_session(tenant, "s1", worker_host="host-a")
    response = in_session(api, "s1")
    assert response.status_code == 200, response.content
    assert [(s.name, s.queue) for s in fake_dispatch.sent] == [(dispatch.RUN_EXECUTION, dispatch.host_queue("host-a"))]
    row = Execution.objects.get(pk=response.json()["executionId"])
    assert row.session == session
    session.refresh_from_db()
    assert session.busy_execution is None  # released when the run finished


def test_a_new_session_is_created_and_its_first_run_goes_to_the_shared_queue(api, fake_dispatch, tenant):
    response = in_session(api, "fresh")
    assert response.status_code == 200, response.content
    assert [s.queue for s in fake_dispatch.sent] == [None]
    session = Session.objects.get(tenant=tenant, session_id="fresh")
    assert (session.state, session.runtime) == (SessionState.STARTING, "python")


def test_a_busy_session_is_409_and_starts_nothing(api, fake_dispatch, tenant):
    owner = uuid.uuid4()
    make_session(tenant, "busy", busy_execution=owner)
    assert_error(in_session(api, "busy"), 409, "session_busy", "another execution")
    assert_nothing_started(fake_dispatch, tenant=tenant)
    assert Session.objects.get(session_id="busy").busy_execution == owner


def test_a_dead_session_is_409_and_starts_nothing(api, fake_dispatch, tenant):
    make_session(tenant, "dead", state=SessionState.DEAD, state_reason="its sandbox stopped answering")
    body = assert_error(in_session(api, "dead"), 409, "session_dead", "dead", "DELETE")
    assert "stopped answering" in body["error"]
    assert_nothing_started(fake_dispatch, tenant=tenant)


def test_switching_a_sessions_runtime_is_400(api, fake_dispatch, tenant):
    make_session(tenant, "py", runtime="python")
    assert_error(in_session(api, "py", {"runtime": "bash", "code": "echo"}), 400, "validation_error",
                 "Cannot switch runtime")
    assert_nothing_started(fake_dispatch, tenant=tenant)
    assert Session.objects.get(session_id="py").busy_execution is None


def test_another_tenants_session_of_the_same_id_is_a_different_session(api, fake_dispatch, tenant, other_tenant):
    theirs = make_session(other_tenant, "shared", runtime="bash", busy_execution=uuid.uuid4(), worker_host="host-b")
    response = in_session(api, "shared")
    assert response.status_code == 200, response.content
    mine = Session.objects.get(tenant=tenant, session_id="shared")
    assert mine.pk != theirs.pk and mine.runtime == "python" and mine.container_id == ""
    # A new session, placed (on the one alive host) and sent to its queue.
    assert fake_dispatch.sent[0].queue == dispatch.host_queue(mine.worker_host) == "isol8.host.host-b"


def test_max_sessions_is_429_and_existing_sessions_still_run(api, fake_dispatch, tenant):
    tenant.max_sessions = 1
    tenant.save()
    make_session(tenant, "one")
    response = in_session(api, "two")
    assert_error(response, 429, "quota_exceeded", "1 live sessions")
    assert int(response["Retry-After"]) >= 1
    assert_nothing_started(fake_dispatch, tenant=tenant)
    assert not Session.objects.filter(session_id="two").exists()
    assert in_session(api, "one").status_code == 200


def test_session_memory_cap_is_429(api, fake_dispatch, tenant):
    tenant.max_session_memory = 1024**3
    tenant.save()
    make_session(tenant, "big", limits={"memory": 768 * 1024**2, "cpu": 1.0})
    response = in_session(api, "more", options={"memoryLimit": "512m"})
    assert_error(response, 429, "quota_exceeded", "memory", str(1024**3))
    assert int(response["Retry-After"]) >= 1
    assert_nothing_started(fake_dispatch, tenant=tenant)
    assert in_session(api, "small", options={"memoryLimit": "128m"}).status_code == 200


def test_session_cpu_cap_is_429(api, fake_dispatch, tenant):
    tenant.max_session_cpus = 1.5
    tenant.save()
    make_session(tenant, "one", limits={"memory": 64 * 1024**2, "cpu": 1.0})
    response = in_session(api, "two", options={"cpuLimit": 1})
    assert_error(response, 429, "quota_exceeded", "1.5 CPUs")
    assert_nothing_started(fake_dispatch, tenant=tenant)
    assert in_session(api, "half", options={"cpuLimit": 0.5}).status_code == 200


def test_stopped_sessions_do_not_count_against_max_sessions(api, fake_dispatch, tenant):
    tenant.max_sessions = 1
    tenant.save()
    make_session(tenant, "old", state=SessionState.STOPPED)
    assert in_session(api, "new").status_code == 200


# ------------------------------------------------------------------- streams


def test_execute_stream_with_accept_event_stream_starts_a_stream(api, fake_dispatch, tenant):
    fake_dispatch.answer_runs(None)
    response = api.post("/execute/stream", {"request": PY}, format="json", HTTP_ACCEPT="text/event-stream")
    try:
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/event-stream")
        assert response["Cache-Control"] == "no-cache"
        execution_id = response["X-Execution-Id"]
    finally:
        response.close()
    row = Execution.objects.get(pk=execution_id)
    assert row.streamed is True and row.status == Status.QUEUED
    assert [(s.name, s.args) for s in fake_dispatch.sent] == [(dispatch.RUN_EXECUTION, (execution_id,))]


@pytest.mark.parametrize(
    "accept", [None, "*/*", "text/*", "text/event-stream", "application/json;q=1, text/event-stream;q=0.1"]
)
def test_execute_stream_answers_every_accept_that_admits_event_streams(api, fake_dispatch, accept):
    fake_dispatch.answer_runs(None)
    extra = {"HTTP_ACCEPT": accept} if accept is not None else {}
    response = api.post("/execute/stream", {"request": PY}, format="json", **extra)
    try:
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/event-stream")
    finally:
        response.close()


@pytest.mark.parametrize("accept", ["application/json", "application/xml", "text/html", "text/event-stream;q=0"])
def test_execute_stream_refuses_an_accept_without_event_streams_with_406(api, fake_dispatch, tenant, accept):
    response = api.post("/execute/stream", {"request": PY}, format="json", HTTP_ACCEPT=accept)
    assert_error(response, 406, "not_acceptable", "text/event-stream")
    assert_nothing_started(fake_dispatch, tenant=tenant)


@pytest.mark.parametrize("accept", ["application/xml", "text/html", "text/plain", "*/*"])
def test_json_routes_answer_json_whatever_the_accept(api, fake_dispatch, accept):
    # tests/stack/service/test_real_clients.py: JSON routes ignore Accept, as isol8's server does.
    response = execute(api, HTTP_ACCEPT=accept)
    assert response.status_code == 200, response.content
    assert response.json()["stdout"] == "hello"
    assert api.get("/sessions", HTTP_ACCEPT=accept).status_code == 200


def test_execute_stream_refuses_past_the_tenants_open_streams(api, fake_dispatch, tenant, settings):
    settings.ISOL8_TENANT_MAX_STREAMS = 0
    response = api.post("/execute/stream", {"request": PY}, format="json", HTTP_ACCEPT="text/event-stream")
    assert_error(response, 429, "quota_exceeded", "open streams")
    assert int(response["Retry-After"]) >= 1
    assert_nothing_started(fake_dispatch, tenant=tenant)


def test_execute_stream_gives_quota_errors_as_json_before_the_stream(api, fake_dispatch, tenant):
    tenant.max_concurrent = 1
    tenant.save()
    quotas.acquire(tenant=tenant, execution_id="held-elsewhere", hold_seconds=60)
    response = api.post("/execute/stream", {"request": PY}, format="json", HTTP_ACCEPT="text/event-stream")
    assert_error(response, 429, "quota_exceeded", "concurrent")
    assert_nothing_started(fake_dispatch)


# --------------------------------------------------------- method and route


@pytest.mark.parametrize(("method", "path"), [("put", "/execute"), ("get", "/execute"), ("delete", "/sessions"),
                                              ("post", "/sessions"), ("patch", "/file")])
def test_a_method_a_route_does_not_have_is_405(api, fake_dispatch, tenant, method, path):
    response = getattr(api, method)(path)
    assert_error(response, 405, "method_not_allowed", method.upper())
    assert_nothing_started(fake_dispatch, tenant=tenant)


def test_an_unknown_route_is_a_json_404(api, fake_dispatch):
    assert_error(api.get("/nope"), 404, "not_found", "/nope")
