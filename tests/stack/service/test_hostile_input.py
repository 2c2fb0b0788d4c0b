"""Hostile input on every route gets its status and creates nothing (issue 5, point 5)."""

from __future__ import annotations

import pytest

from executions.models import Execution
from sandbox import containers
from sessions_app.models import Session
from tenants.models import ApiKey

pytestmark = pytest.mark.stack


@pytest.fixture
def nothing_created(stack):
    host = stack.env["ISOL8_WORKER_HOST"]
    before = (Execution.objects.count(), Session.objects.count(), ApiKey.objects.count(),
              {c.id for c in containers.list_managed(host=host) if c.labels.get("isol8.pool") != "warm"})
    yield
    after = (Execution.objects.count(), Session.objects.count(), ApiKey.objects.count(),
             {c.id for c in containers.list_managed(host=host) if c.labels.get("isol8.pool") != "warm"})
    assert after[:3] == before[:3]
    assert after[3] <= before[3]


JSON = {"Content-Type": "application/json"}
BIG = b'{"request": {"runtime": "python", "code": "' + b"x" * (3 * 1024 * 1024) + b'"}}'


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code"),
    [
        ("POST", "/execute", BIG, JSON, 413, "payload_too_large"),
        ("POST", "/execute/stream", BIG, JSON, 413, "payload_too_large"),
        ("POST", "/file", b"{" + b" " * (17 * 1024 * 1024) + b"}", JSON, 413, "payload_too_large"),
        ("POST", "/execute", b"\xff\xfe garbage", JSON, 400, "invalid_json"),
        ("POST", "/execute/stream", b"[", JSON, 400, "invalid_json"),
        ("POST", "/file", b"nope", JSON, 400, "invalid_json"),
        ("POST", "/execute", b'{"request": {"runtime": "python", "code": "x"}}', {"Content-Type": "text/xml"},
         415, "unsupported_media_type"),
        ("POST", "/execute", b'{"request": {"runtime": "python", "code": "x", "timeoutMs": 1e300}}', JSON,
         400, "validation_error"),
        ("POST", "/execute", b'{"request": {"runtime": "python", "code": "x", "timeoutMs": 99999999999999}}',
         JSON, 400, "validation_error"),
        ("POST", "/execute", b'{"request": {"runtime": "python", "code": "x", "stdin": "a\\u0000b"}}', JSON,
         400, "validation_error"),
        ("POST", "/execute", b'{"request": {"runtime": "python", "code": "x"}, "options": {"pidsLimit": -1}}',
         JSON, 400, "validation_error"),
        ("POST", "/execute", b'{"request": {"runtime": "python", "code": "x"}, "options": {"secrets": "s"}}',
         JSON, 400, "validation_error"),
        ("POST", "/execute", b'{"request": {"runtime": "python", "code": "x"}, "sessionId": "../etc"}', JSON,
         400, "validation_error"),
        ("POST", "/execute", b'{"request": {"runtime": "python", "code": "x"}, "sessionId": 12}', JSON,
         400, "validation_error"),
        ("POST", "/execute", b'{"request": "print(1)"}', JSON, 400, "validation_error"),
        ("POST", "/execute", b'"just a string"', JSON, 400, "validation_error"),
        ("POST", "/file", b'{"sessionId": "s", "path": "/sandbox/x", "content": "***"}', JSON, 400,
         "validation_error"),
        ("POST", "/file", b'{"sessionId": "s", "path": "/sandbox/x"}', JSON, 400, "validation_error"),
        ("POST", "/file", b'{"sessionId": "s\\u0000", "path": "/sandbox/x", "content": ""}', JSON, 400,
         "validation_error"),
        ("GET", "/file?sessionId=s", None, {}, 400, "validation_error"),
        ("GET", "/file?sessionId=s&path=/etc/passwd", None, {}, 400, "path_outside_sandbox"),
        ("GET", "/executions?status=exploded", None, {}, 400, "validation_error"),
        ("GET", "/executions?until=yesterday", None, {}, 400, "validation_error"),
        ("POST", "/executions/not-a-uuid/cancel", None, {}, 404, "not_found"),
        ("DELETE", "/session/" + "x" * 300, None, {}, 200, None),
        ("PUT", "/execute", b"{}", JSON, 405, "method_not_allowed"),
        ("GET", "/execute", None, {}, 405, "method_not_allowed"),
    ],
)
def test_hostile_input_is_refused_cleanly(api, nothing_created, method, path, body, headers, status, code):
    response = api.request(method, path, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    if code:
        assert response.json()["code"] == code
        assert response.json()["error"]


def test_nul_characters_are_refused_in_requests_and_replaced_in_stored_output(api):
    """PostgreSQL cannot store NUL in text: the same clear behaviour on every database, never a 500."""
    refused = api.post("/execute", json={"request": {"runtime": "python", "code": "print(1)\x00"}})
    assert refused.status_code == 400 and "NUL" in refused.json()["error"], refused.text
    assert api.get("/executions", params={"runtime": "py\x00thon"}).status_code == 400
    assert api.get("/auth/keys", params={"tenantId": "a\x00b"}).status_code == 400
    printed = api.post("/execute", json={"request": {"runtime": "python", "code": "print('a\\0b')"}})
    assert printed.status_code == 200 and printed.json()["stdout"] == "a\ufffdb", printed.text
    record = api.get(f"/executions/{printed.json()['executionId']}").json()
    assert record["stdout"] == "a\ufffdb"
