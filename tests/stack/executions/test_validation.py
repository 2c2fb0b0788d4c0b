"""Bad input gets a clear JSON error and creates nothing (api.md "Error shape")."""

from __future__ import annotations

import pytest

from executions.models import Execution
from tests.conftest import run

pytestmark = pytest.mark.stack


def assert_error(response, status, code, mentions=""):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert mentions in body["error"]
    return body


@pytest.mark.parametrize(
    ("request_body", "code", "mentions"),
    [
        ({"runtime": "cobol", "code": "x"}, "unsupported_runtime", "cobol"),
        ({"code": "print(1)"}, "validation_error", "runtime"),
        ({"runtime": "python"}, "validation_error", "code"),
        ({"runtime": "python", "code": "   \n\t"}, "validation_error", "code"),
        ({"runtime": "python", "code": "print(1)", "cmd": "ls"}, "validation_error", "exclusive"),
        ({"runtime": "python", "code": 5}, "validation_error", "code"),
        ({"runtime": "python", "code": "x", "timeoutMs": -1}, "validation_error", "timeoutMs"),
        ({"runtime": "python", "code": "x", "timeoutMs": "soon"}, "validation_error", "timeoutMs"),
        ({"runtime": "python", "code": "x", "env": {"1BAD": "v"}}, "validation_error", "env"),
        ({"runtime": "python", "code": "x", "env": ["A=1"]}, "validation_error", "env"),
        ({"runtime": "python", "code": "x", "files": {"/etc/passwd": "x"}}, "path_outside_sandbox", "/etc/passwd"),
        ({"runtime": "python", "code": "x", "files": {"../../etc/x": "x"}}, "path_outside_sandbox", "outside"),
        ({"runtime": "python", "code": "x", "outputPaths": ["/proc/self/environ"]}, "path_outside_sandbox", "proc"),
        ({"runtime": "python", "code": "x", "workdir": "/etc"}, "path_outside_sandbox", "inside /sandbox"),
        ({"runtime": "python", "code": "x", "fileExtension": "py"}, "validation_error", "fileExtension"),
        ({"runtime": "python", "code": "a\x00b"}, "validation_error", "code"),
        ({"runtime": "python", "code": "x", "surprise": 1}, "validation_error", "surprise"),
    ],
)
def test_bad_request_fields_are_400_naming_the_field(api, request_body, code, mentions):
    before = Execution.objects.count()
    assert_error(run(api, request_body), 400, code, mentions)
    assert Execution.objects.count() == before


@pytest.mark.parametrize(
    ("options", "code", "mentions"),
    [
        ({"memoryLimit": "lots"}, "validation_error", "memoryLimit"),
        ({"cpuLimit": -2}, "validation_error", "cpuLimit"),
        ({"pidsLimit": 0}, "validation_error", "pidsLimit"),
        ({"maxOutputSize": 0}, "validation_error", "maxOutputSize"),
        ({"bogus": True}, "validation_error", "bogus"),
        ({"network": "everything"}, "validation_error", "network"),
        ({"memoryLimit": "64g"}, "policy_denied", "memoryLimit"),
        ({"timeoutMs": 10_000_000}, "policy_denied", "timeoutMs"),
        ({"cpuLimit": 32}, "policy_denied", "cpuLimit"),
        ({"network": "host"}, "policy_denied", "network"),
        ({"security": {"seccomp": "unconfined"}}, "policy_denied", "seccomp"),
        ({"image": "ubuntu:latest"}, "policy_denied", "image"),
    ],
)
def test_bad_or_forbidden_options(api, options, code, mentions):
    status = 403 if code == "policy_denied" else 400
    before = Execution.objects.count()
    assert_error(run(api, {"runtime": "python", "code": "print(1)"}, options), status, code, mentions)
    assert Execution.objects.count() == before


def test_isol8_client_options_are_accepted(api):
    # What isol8's RemoteIsol8 / CLI send with every request.
    options = {"mode": "ephemeral", "network": "none", "networkFilter": {"whitelist": [], "blacklist": []},
               "memoryLimit": "512m", "cpuLimit": 1, "timeoutMs": 30000, "debug": False, "persist": False,
               "remoteCode": {"enabled": False}}
    response = run(api, {"runtime": "python", "code": "print(1)", "fileExtension": ".py"}, options)
    assert response.status_code == 200, response.text


def test_runtime_not_allowed_for_tenant_is_403(api, tenant):
    tenant.allowed_runtimes = ["bash"]
    tenant.save()
    assert_error(run(api, {"runtime": "python", "code": "print(1)"}), 403, "policy_denied", "python")


def test_timeout_above_tenant_cap_is_403(api, tenant):
    tenant.max_timeout_ms = 1000
    tenant.save()
    assert_error(run(api, {"runtime": "python", "code": "x", "timeoutMs": 2000}), 403, "policy_denied", "1000")


def test_body_that_is_not_json_is_400(api):
    response = api.post("/execute", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_json")


def test_wrong_content_type_is_415(api):
    response = api.post("/execute", content=b"request=1", headers={"Content-Type": "text/plain"})
    assert_error(response, 415, "unsupported_media_type")


def test_body_over_the_limit_is_413(api):
    code = "#" + "x" * (2 * 1024 * 1024)
    assert_error(run(api, {"runtime": "python", "code": code}), 413, "payload_too_large")


def test_json_that_is_not_an_object_is_400(api):
    assert_error(api.post("/execute", json=[1, 2]), 400, "validation_error")


def test_unknown_route_is_json_404(api):
    assert_error(api.get("/nope"), 404, "not_found")
