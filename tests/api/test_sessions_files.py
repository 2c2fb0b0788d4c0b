"""GET /sessions, DELETE /session/{id}, POST/GET /file through the fake worker."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest

from isol8_site import dispatch, wire
from isol8_site.errors import INTERNAL_MESSAGE
from isol8_site.redis import get_redis
from sessions_app.models import Session, SessionState
from tenants import quotas
from tests.api.conftest import assert_error, assert_nothing_started, make_session


def upload(api, session_id: Any = "s1", path: Any = "/sandbox/a.txt", content: bytes | str = b"data", **fields: Any):
    body: dict[str, Any] = {"sessionId": session_id, "path": path,
                            "content": base64.b64encode(content).decode() if isinstance(content, bytes) else content}
    body.update(fields)
    return api.post("/file", body, format="json")


def download(api, session_id: str | None = "s1", path: str | None = "/sandbox/a.txt"):
    params = {k: v for k, v in {"sessionId": session_id, "path": path}.items() if v is not None}
    return api.get("/file", params)


def idle(session: Session) -> bool:
    session.refresh_from_db()
    return session.busy_execution is None


# ------------------------------------------------------------------ listing


def test_sessions_lists_only_the_callers_sessions(api, fake_dispatch, tenant, other_tenant):
    make_session(tenant, "mine", runtime="bash")
    make_session(tenant, "busy-one", busy_execution=uuid.uuid4())
    make_session(tenant, "broken", state=SessionState.DEAD)
    make_session(tenant, "gone", state=SessionState.STOPPED)
    make_session(other_tenant, "theirs")
    make_session(other_tenant, "mine")
    response = api.get("/sessions")
    assert response.status_code == 200
    sessions = {s["id"]: s for s in response.json()["sessions"]}
    assert set(sessions) == {"mine", "busy-one", "broken"}
    assert sessions["mine"]["runtime"] == "bash" and sessions["mine"]["isActive"] is False
    assert sessions["busy-one"]["isActive"] is True
    assert sessions["mine"]["createdAt"].endswith("Z") and sessions["mine"]["lastAccessedAt"].endswith("Z")
    assert fake_dispatch.sent == []


# ----------------------------------------------------------------- deleting


def test_delete_stops_the_session_and_asks_its_host_to_remove_the_container(api, fake_dispatch, tenant):
    session = make_session(tenant, "s1", container_id="c-123", worker_host="host-a")
    response = api.delete("/session/s1")
    assert response.status_code == 200 and response.json() == {"ok": True}
    session.refresh_from_db()
    assert session.state == SessionState.STOPPED
    assert [(s.name, s.args, s.queue) for s in fake_dispatch.sent] == [
        (dispatch.STOP_SESSION_CONTAINER, (session.pk, "c-123"), dispatch.host_queue("host-a"))
    ]
    assert all(s["id"] != "s1" for s in api.get("/sessions").json()["sessions"])


def test_delete_of_a_busy_session_cancels_its_run(api, fake_dispatch, tenant):
    owner = uuid.uuid4()
    make_session(tenant, "s1", busy_execution=owner)
    pubsub = get_redis().pubsub()
    pubsub.subscribe(wire.CANCEL_CHANNEL)
    try:
        pubsub.get_message(timeout=1)  # the subscription's confirmation
        assert api.delete("/session/s1").json() == {"ok": True}
        message = pubsub.get_message(timeout=2)
    finally:
        pubsub.close()
    assert message is not None and message["data"] in (str(owner), str(owner).encode())


def test_delete_of_a_session_without_a_container_sends_nothing(api, fake_dispatch, tenant):
    make_session(tenant, "new", state=SessionState.STARTING, container_id="", worker_host="")
    assert api.delete("/session/new").json() == {"ok": True}
    assert Session.objects.get(session_id="new").state == SessionState.STOPPED
    assert fake_dispatch.sent == []


@pytest.mark.parametrize("session_id", ["never-existed", "x" * 300, "bad%20id"])
def test_delete_of_an_unknown_id_is_ok(api, fake_dispatch, tenant, session_id):
    response = api.delete(f"/session/{session_id}")
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert fake_dispatch.sent == []


def test_delete_never_touches_another_tenants_session(api, fake_dispatch, tenant, other_tenant):
    theirs = make_session(other_tenant, "shared")
    assert api.delete("/session/shared").json() == {"ok": True}
    theirs.refresh_from_db()
    assert theirs.state == SessionState.ACTIVE
    assert fake_dispatch.sent == []


# --------------------------------------------------------- file validation


@pytest.mark.parametrize(
    ("body", "status", "code", "mentions"),
    [
        ({"path": "/sandbox/x", "content": ""}, 400, "validation_error", "sessionId"),
        ({"sessionId": "s1", "content": ""}, 400, "validation_error", "path"),
        ({"sessionId": "s1", "path": "/sandbox/x"}, 400, "validation_error", "content"),
        ({"sessionId": "bad id!", "path": "/sandbox/x", "content": ""}, 400, "validation_error", "sessionId"),
        ({"sessionId": "s" * 129, "path": "/sandbox/x", "content": ""}, 400, "validation_error", "sessionId"),
        ({"sessionId": "s\x00", "path": "/sandbox/x", "content": ""}, 400, "validation_error", "sessionId"),
        ({"sessionId": 12, "path": "/sandbox/x", "content": ""}, 400, "validation_error", "sessionId"),
        ({"sessionId": "s1", "path": ["/sandbox/x"], "content": ""}, 400, "validation_error", "path"),
        ({"sessionId": "s1", "path": "/sandbox/x", "content": 5}, 400, "validation_error", "content"),
        ({"sessionId": "s1", "path": "/sandbox/x", "content": "", "mode": "0777"}, 400, "validation_error", "mode"),
        ({"sessionId": "s1", "path": "/etc/passwd", "content": ""}, 400, "path_outside_sandbox", "/etc/passwd"),
        ({"sessionId": "s1", "path": "../../etc/passwd", "content": ""}, 400, "path_outside_sandbox", "outside"),
        ({"sessionId": "s1", "path": "/sandbox/../etc/shadow", "content": ""}, 400, "path_outside_sandbox",
         "outside"),
        ({"sessionId": "s1", "path": "/tmp/x", "content": ""}, 400, "path_outside_sandbox", "/sandbox"),
        ({"sessionId": "s1", "path": "/sandbox", "content": ""}, 400, "path_outside_sandbox", "outside"),
        ({"sessionId": "s1", "path": "a\x00b", "content": ""}, 400, "validation_error", "path"),
        ({"sessionId": "s1", "path": "/sandbox/x", "content": "***"}, 400, "validation_error", "base64"),
        ({"sessionId": "s1", "path": "/sandbox/x", "content": "aGk"}, 400, "validation_error", "base64"),
        ({"sessionId": "s1", "path": "/sandbox/x", "content": "aG k="}, 400, "validation_error", "base64"),
    ],
)
def test_upload_refuses_a_bad_body(api, fake_dispatch, tenant, body, status, code, mentions):
    session = make_session(tenant, "s1")
    assert_error(api.post("/file", body, format="json"), status, code, mentions)
    assert_nothing_started(fake_dispatch, tenant=tenant)
    assert idle(session)


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "code"),
    [
        (b"nope", "application/json", 400, "invalid_json"),
        (b'["s1", "/sandbox/x"]', "application/json", 400, "validation_error"),
        (b'{"sessionId": "s1", "path": "/sandbox/x", "content": ""}', "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_upload_refuses_a_body_that_is_not_a_json_object(api, fake_dispatch, tenant, raw, content_type, status, code):
    assert_error(api.generic("POST", "/file", raw, content_type=content_type), status, code)
    assert_nothing_started(fake_dispatch, tenant=tenant)


def test_upload_refuses_decoded_content_over_the_limit_with_413(api, fake_dispatch, tenant, settings):
    settings.ISOL8_FILE_MAX_BYTES = 16
    session = make_session(tenant, "s1")
    assert_error(upload(api, content=b"x" * 17), 413, "payload_too_large", "16 bytes")
    assert_nothing_started(fake_dispatch, tenant=tenant)
    assert idle(session)
    fake_dispatch.answer_files(wire.FileAnswer(data={}))
    assert upload(api, content=b"x" * 16).status_code == 200


@pytest.mark.parametrize(
    ("params", "code", "mentions"),
    [
        ({"path": "/sandbox/x"}, "validation_error", "sessionId"),
        ({"sessionId": "s1"}, "validation_error", "path"),
        ({"sessionId": "", "path": "/sandbox/x"}, "validation_error", "sessionId"),
        ({"sessionId": "bad id!", "path": "/sandbox/x"}, "validation_error", "sessionId"),
        ({"sessionId": "s1", "path": "/etc/passwd"}, "path_outside_sandbox", "/etc/passwd"),
        ({"sessionId": "s1", "path": "/proc/self/environ"}, "path_outside_sandbox", "outside"),
        ({"sessionId": "s1", "path": "../../etc/passwd"}, "path_outside_sandbox", "outside"),
        ({"sessionId": "s1", "path": "/tmp/x"}, "path_outside_sandbox", "/sandbox"),
    ],
)
def test_download_refuses_bad_parameters(api, fake_dispatch, tenant, params, code, mentions):
    session = make_session(tenant, "s1")
    assert_error(api.get("/file", params), 400, code, mentions)
    assert_nothing_started(fake_dispatch, tenant=tenant)
    assert idle(session)


# --------------------------------------------------- the session's state


@pytest.fixture(params=["upload", "download"])
def file_call(request):
    return upload if request.param == "upload" else download


def test_file_in_an_unknown_session_is_404(api, fake_dispatch, tenant, file_call):
    assert_error(file_call(api, "never-created"), 404, "not_found", "Session")
    assert_nothing_started(fake_dispatch, tenant=tenant)


def test_file_in_another_tenants_session_is_404(api, fake_dispatch, tenant, other_tenant, file_call):
    theirs = make_session(other_tenant, "s1")
    assert_error(file_call(api, "s1"), 404, "not_found", "Session")
    assert_nothing_started(fake_dispatch, tenant=tenant)
    assert idle(theirs)


def test_file_in_a_stopped_session_is_404(api, fake_dispatch, tenant, file_call):
    make_session(tenant, "s1", state=SessionState.STOPPED)
    assert_error(file_call(api, "s1"), 404, "not_found")
    assert_nothing_started(fake_dispatch, tenant=tenant)


def test_file_in_a_session_without_a_container_is_409_session_not_started(api, fake_dispatch, tenant, file_call):
    session = make_session(tenant, "s1", state=SessionState.STARTING, container_id="", worker_host="")
    assert_error(file_call(api, "s1"), 409, "session_not_started", "run an execution")
    assert_nothing_started(fake_dispatch, tenant=tenant)
    assert idle(session)


def test_file_in_a_dead_session_is_409_session_dead(api, fake_dispatch, tenant, file_call):
    make_session(tenant, "s1", state=SessionState.DEAD, state_reason="its sandbox stopped answering")
    assert_error(file_call(api, "s1"), 409, "session_dead", "stopped answering")
    assert_nothing_started(fake_dispatch, tenant=tenant)


def test_file_in_a_busy_session_is_409_session_busy(api, fake_dispatch, tenant, file_call):
    owner = uuid.uuid4()
    session = make_session(tenant, "s1", busy_execution=owner)
    assert_error(file_call(api, "s1"), 409, "session_busy")
    assert_nothing_started(fake_dispatch, tenant=tenant)
    session.refresh_from_db()
    assert session.busy_execution == owner


def test_file_operation_over_the_concurrency_quota_is_429_and_frees_the_session(
    api, fake_dispatch, tenant, file_call
):
    tenant.max_concurrent = 1
    tenant.save()
    session = make_session(tenant, "s1")
    quotas.acquire(tenant=tenant, execution_id="held-elsewhere", hold_seconds=60)
    response = file_call(api, "s1")
    assert_error(response, 429, "quota_exceeded", "concurrent")
    assert int(response["Retry-After"]) >= 1
    assert fake_dispatch.sent == []
    assert idle(session)


# ------------------------------------------------- through the fake worker


def test_upload_goes_to_the_sessions_host_and_answers_ok(api, fake_dispatch, tenant):
    session = make_session(tenant, "s1", worker_host="host-a")
    fake_dispatch.answer_files(wire.FileAnswer(data={}))
    payload = bytes([0, 1, 2, 255, 10])
    response = upload(api, "s1", "nested/dir/x.bin", payload)
    assert response.status_code == 200 and response.json() == {"ok": True}
    [sent] = fake_dispatch.sent
    assert (sent.name, sent.queue) == (dispatch.SESSION_FILE_OP, dispatch.host_queue("host-a"))
    session_pk, op_id, op = sent.args
    assert session_pk == session.pk and uuid.UUID(op_id)
    assert op == {"op": "put_file", "path": "/sandbox/nested/dir/x.bin", "content": base64.b64encode(payload).decode()}
    assert idle(session)
    assert quotas.tenant_usage(tenant=tenant).running == 0


def test_download_returns_the_workers_content(api, fake_dispatch, tenant, settings):
    session = make_session(tenant, "s1", worker_host="host-b")
    content = base64.b64encode(b"a,b\n1,2\n").decode()
    fake_dispatch.answer_files(wire.FileAnswer(data={"content": content}))
    response = download(api, "s1", "data.csv")
    assert response.status_code == 200 and response.json() == {"content": content}
    [sent] = fake_dispatch.sent
    assert sent.queue == dispatch.host_queue("host-b")
    assert sent.args[2] == {"op": "get_file", "path": "/sandbox/data.csv", "maxBytes": settings.ISOL8_FILE_MAX_BYTES}
    assert idle(session)
    assert quotas.tenant_usage(tenant=tenant).running == 0


@pytest.mark.parametrize(
    ("code", "message", "status"),
    [
        ("not_found", "No such file: /sandbox/a.txt", 404),
        ("path_outside_sandbox", "Path /sandbox/link leads outside /sandbox", 400),
        ("validation_error", "Not a regular file: /sandbox/dir", 400),
        ("payload_too_large", "File is larger than 10485760 bytes", 413),
        ("sandbox_full", "The session's /sandbox is full", 507),
        ("session_dead", "The session's sandbox stopped answering; it has been removed", 409),
        ("internal_error", INTERNAL_MESSAGE, 500),  # the web never relays a 500's text
    ],
)
def test_the_workers_file_errors_map_to_statuses(api, fake_dispatch, tenant, file_call, code, message, status):
    session = make_session(tenant, "s1")
    fake_dispatch.answer_files(wire.FileAnswer(error_code=code, message=message))
    body = assert_error(file_call(api, "s1"), status, code)
    assert body["error"] == message
    assert idle(session)
    assert quotas.tenant_usage(tenant=tenant).running == 0


def test_an_internal_file_error_never_shows_internal_text(api, fake_dispatch, tenant, file_call):
    make_session(tenant, "s1")
    leaked = "Traceback (most recent call last): KeyError: 'container_id' at /srv/isol8/worker/sessions.py"
    fake_dispatch.answer_files(wire.FileAnswer(error_code="internal_error", message=leaked))
    body = assert_error(file_call(api, "s1"), 500, "internal_error")
    assert "sessions.py" not in body["error"] and "container_id" not in body["error"]


def test_a_worker_that_never_answers_is_503_and_frees_the_session(api, fake_dispatch, tenant, settings, file_call):
    # The web waits ISOL8_QUEUE_TIMEOUT + ISOL8_FILE_OP_TIMEOUT + 10 s; this makes it 1 s.
    settings.ISOL8_QUEUE_TIMEOUT = 0
    settings.ISOL8_FILE_OP_TIMEOUT = -9
    session = make_session(tenant, "s1")
    fake_dispatch.answer_files(None)
    response = file_call(api, "s1")
    assert_error(response, 503, "unavailable", "did not answer")
    assert "Retry-After" in response, dict(response.headers)
    assert int(response["Retry-After"]) >= 1
    assert [s.name for s in fake_dispatch.sent] == [dispatch.SESSION_FILE_OP]
    assert idle(session)
    assert quotas.tenant_usage(tenant=tenant).running == 0
