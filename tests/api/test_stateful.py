"""Stateful sessions through the API: the body's ``stateful``, what a cell may not have, cell results, restart.

The worker is faked (tests/api/conftest.py): a run is finished with a
RunResult whose ``cell`` stands for what the launcher's interpreter sent.
The real interpreter is tested in tests/stack/sessions_app/test_stateful.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from executions.models import Execution
from executions.services import execution_spec
from isol8_site import dispatch, wire
from sandbox.spec import RunResult
from sessions_app.models import Session
from tests.api.conftest import assert_error, assert_nothing_started, make_session

PY = {"runtime": "python", "code": "x + 1"}
CELL = {
    "value": {"text/plain": "43"},
    "outputs": [{"type": "display", "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}}],
    "exception": None,
    "stateLost": False,
}


def cell_result(cell: dict[str, Any] | None = CELL, **fields: Any) -> RunResult:
    values: dict[str, Any] = {"status": "ok", "exit_code": 0, "duration_ms": 3, "cell": cell}
    values.update(fields)
    return RunResult(**values)


def execute(api, body: dict[str, Any], route: str = "/execute"):
    return api.post(route, body, format="json", HTTP_ACCEPT="application/json")


def test_the_first_execute_makes_the_session_stateful_and_the_result_has_the_cell(api, fake_dispatch, tenant):
    fake_dispatch.answer_runs(cell_result())
    response = execute(api, {"request": PY, "sessionId": "nb", "stateful": True})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["value"] == {"text/plain": "43"}
    assert body["outputs"] == CELL["outputs"]
    assert body["exception"] is None and body["stateLost"] is False
    session = Session.objects.get(tenant=tenant, session_id="nb")
    assert session.stateful is True
    execution = Execution.objects.get(pk=body["executionId"])
    spec, _ = execution_spec(execution=execution)
    assert spec.stateful is True


def test_later_executes_may_leave_stateful_out_and_stay_cells(api, fake_dispatch, tenant):
    fake_dispatch.answer_runs(cell_result())
    assert execute(api, {"request": PY, "sessionId": "nb", "stateful": True}).status_code == 200
    response = execute(api, {"request": PY, "sessionId": "nb"})
    assert response.status_code == 200, response.content
    assert response.json()["value"] == {"text/plain": "43"}
    spec, _ = execution_spec(execution=Execution.objects.get(pk=response.json()["executionId"]))
    assert spec.stateful is True


def test_a_plain_session_has_no_cell_fields(api, fake_dispatch, tenant):
    response = execute(api, {"request": PY, "sessionId": "plain"})
    assert response.status_code == 200
    assert "value" not in response.json() and "stateLost" not in response.json()
    assert Session.objects.get(tenant=tenant, session_id="plain").stateful is False


def test_switching_a_session_to_or_from_stateful_is_400(api, fake_dispatch, tenant):
    make_session(tenant, "plain")
    assert_error(execute(api, {"request": PY, "sessionId": "plain", "stateful": True}), 400, "validation_error",
                 "stateful")
    make_session(tenant, "nb", stateful=True)
    assert_error(execute(api, {"request": PY, "sessionId": "nb", "stateful": False}), 400, "validation_error",
                 "not stateful")
    assert Session.objects.get(tenant=tenant, session_id="nb").busy_execution is None  # the claim rolled back


def test_stateful_without_a_session_is_400(api, fake_dispatch, tenant):
    assert_error(execute(api, {"request": PY, "stateful": True}), 400, "validation_error", "sessionId")
    assert_nothing_started(fake_dispatch)


def test_bun_and_deno_sessions_cannot_be_stateful(api, fake_dispatch, tenant):
    for runtime in ("bun", "deno"):
        response = execute(api, {"request": {"runtime": runtime, "code": "1"}, "sessionId": f"s-{runtime}",
                                 "stateful": True})
        assert_error(response, 400, "validation_error", runtime)
    assert not Session.objects.filter(tenant=tenant).exists()
    assert_nothing_started(fake_dispatch)


@pytest.mark.parametrize("extra, word", [
    ({"cmd": "echo hi", "code": ""}, "cmd"),
    ({"stdin": "data"}, "stdin"),
    ({"setupScript": "echo setup"}, "setupScript"),
    ({"fileExtension": ".py"}, "fileExtension"),
])
def test_what_a_cell_cannot_have_is_400_and_the_session_stays_free(api, fake_dispatch, tenant, extra, word):
    make_session(tenant, "nb", stateful=True)
    request = {**PY, **extra}
    if not request.get("code"):
        request.pop("code")
    assert_error(execute(api, {"request": request, "sessionId": "nb"}), 400, "validation_error", word)
    assert Session.objects.get(tenant=tenant, session_id="nb").busy_execution is None
    assert fake_dispatch.runs() == []


def test_a_lost_state_and_an_exception_are_in_the_result_and_the_history(api, fake_dispatch, tenant):
    lost = {"value": None, "outputs": [], "stateLost": True,
            "exception": {"ename": "MemoryError", "evalue": "", "traceback": ["MemoryError\n"]}}
    fake_dispatch.answer_runs(cell_result(lost, status="oom", exit_code=137))
    body = execute(api, {"request": PY, "sessionId": "nb", "stateful": True}).json()
    assert body["stateLost"] is True and body["status"] == "oom"
    assert body["exception"]["ename"] == "MemoryError"
    record = api.get(f"/executions/{body['executionId']}").json()
    assert record["stateLost"] is True and record["exception"]["ename"] == "MemoryError"


def test_restart_reaches_the_sessions_worker_as_a_kernel_restart(api, fake_dispatch, tenant):
    make_session(tenant, "nb", stateful=True)
    fake_dispatch.answer_files(wire.FileAnswer(data={"restarted": True}))
    response = api.post("/session/nb/restart")
    assert response.status_code == 200, response.content
    assert response.json() == {"ok": True, "restarted": True}
    (sent,) = [s for s in fake_dispatch.sent if s.name == dispatch.SESSION_FILE_OP]
    assert sent.args[2] == {"op": "kernel_restart"}
    assert sent.queue == dispatch.host_queue("host-a")


def test_restart_of_a_plain_session_is_400_and_of_an_unknown_one_404(api, fake_dispatch, tenant, other_tenant):
    make_session(tenant, "plain")
    assert_error(api.post("/session/plain/restart"), 400, "validation_error", "not stateful")
    assert_error(api.post("/session/nope/restart"), 404, "not_found")
    make_session(other_tenant, "theirs", stateful=True)
    assert_error(api.post("/session/theirs/restart"), 404, "not_found")  # another tenant's is never reached
    assert [s for s in fake_dispatch.sent if s.name == dispatch.SESSION_FILE_OP] == []


def test_restart_while_a_cell_runs_is_409(api, fake_dispatch, tenant):
    import uuid

    make_session(tenant, "nb", stateful=True, busy_execution=uuid.uuid4())
    assert_error(api.post("/session/nb/restart"), 409, "session_busy")
