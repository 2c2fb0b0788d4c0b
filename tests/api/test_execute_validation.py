"""POST /execute and /execute/stream refuse bad bodies (400), forbidden asks (403) and start nothing.

Every rule of executions/serializers.py and executions/policy.py has a row
below; each row runs against both routes, which validate the same way and
answer the same JSON error before any stream starts (api.md "Streaming").
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import assert_error, assert_nothing_started

ROUTES = ["/execute", "/execute/stream"]
PY = {"runtime": "python", "code": "print(1)"}
MAX_INT = 2**31 - 1


def post(api, route: str, body: Any, **extra: Any):
    return api.post(route, body, format="json", HTTP_ACCEPT="text/event-stream", **extra)


@pytest.fixture(params=ROUTES)
def route(request):
    return request.param


# --------------------------------------------------------------- the body itself


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "code", "mentions"),
    [
        (b"{not json", "application/json", 400, "invalid_json", "not valid JSON"),
        (b"\xff\xfe garbage", "application/json", 400, "invalid_json", "not valid JSON"),
        (b"[", "application/json", 400, "invalid_json", "not valid JSON"),
        (b"", "application/json", 400, "validation_error", "request"),
        (b"[" * 100_000, "application/json", 400, "invalid_json", "not valid JSON"),
        (b'{"request": {"runtime": "python", "code": "x"}}', "text/plain", 415, "unsupported_media_type",
         "application/json"),
        (b'{"request": {"runtime": "python", "code": "x"}}', "application/xml", 415, "unsupported_media_type",
         "application/json"),
        (b"request=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type", "application/json"),
        (b'"just a string"', "application/json", 400, "validation_error", "JSON object"),
        (b"[1, 2]", "application/json", 400, "validation_error", "JSON object"),
        (b"null", "application/json", 400, "validation_error", "JSON object"),
        (b"42", "application/json", 400, "validation_error", "JSON object"),
    ],
)
def test_execute_refuses_a_body_that_is_not_a_json_object(
    api, fake_dispatch, tenant, route, raw, content_type, status, code, mentions
):
    response = api.generic("POST", route, raw, content_type=content_type, HTTP_ACCEPT="text/event-stream")
    assert_error(response, status, code, mentions)
    assert_nothing_started(fake_dispatch, tenant=tenant)


# ------------------------------------------------------------------ the fields

# (body, code, words the sentence must contain); every row is a 400.
BAD_BODIES: list[tuple[str, dict[str, Any], str, str]] = [
    # The body around the request.
    ("unknown top-level field", {"request": PY, "surprise": 1}, "validation_error", "surprise"),
    ("request missing", {"options": {}}, "validation_error", "request"),
    ("request not an object", {"request": "print(1)"}, "validation_error", "request"),
    ("options not an object", {"request": PY, "options": "fast"}, "validation_error", "options"),
    ("both body forms", {"request": PY, "code": "x"}, "validation_error", "not both"),
    ("sessionId with a slash", {"request": PY, "sessionId": "../etc"}, "validation_error", "sessionId"),
    ("sessionId with a space", {"request": PY, "sessionId": "bad id!"}, "validation_error", "sessionId"),
    ("sessionId empty", {"request": PY, "sessionId": ""}, "validation_error", "sessionId"),
    ("sessionId too long", {"request": PY, "sessionId": "x" * 129}, "validation_error", "sessionId"),
    ("sessionId a number", {"request": PY, "sessionId": 12}, "validation_error", "sessionId"),
    # runtime
    ("runtime missing", {"request": {"code": "print(1)"}}, "validation_error", "runtime"),
    ("runtime unknown", {"request": {"runtime": "cobol", "code": "x"}}, "unsupported_runtime", "cobol"),
    ("runtime padded", {"request": {"runtime": " python", "code": "x"}}, "unsupported_runtime", "python"),
    ("runtime a number", {"request": {"runtime": 3, "code": "x"}}, "validation_error", "runtime"),
    # code / cmd / codeUrl
    ("no code nor cmd", {"request": {"runtime": "python"}}, "validation_error", "code"),
    ("code blank", {"request": {"runtime": "python", "code": "   \n\t"}}, "validation_error", "code"),
    ("cmd blank", {"request": {"runtime": "bash", "cmd": " "}}, "validation_error", "cmd"),
    ("code and cmd", {"request": {**PY, "cmd": "ls"}}, "validation_error", "exclusive"),
    ("code and codeUrl", {"request": {**PY, "codeUrl": "https://example.com/x.py"}}, "validation_error",
     "exclusive"),
    ("code a number", {"request": {"runtime": "python", "code": 5}}, "validation_error", "code"),
    ("code with NUL", {"request": {"runtime": "python", "code": "a\x00b"}}, "validation_error", "code"),
    ("cmd a list", {"request": {"runtime": "bash", "cmd": ["ls"]}}, "validation_error", "cmd"),
    ("allowInsecureCodeUrl a string", {"request": {**PY, "allowInsecureCodeUrl": "true"}}, "validation_error",
     "allowInsecureCodeUrl"),
    ("unknown request field", {"request": {**PY, "surprise": 1}}, "validation_error", "surprise"),
    # stdin, env, metadata, setupScript
    ("stdin with NUL", {"request": {**PY, "stdin": "a\x00b"}}, "validation_error", "stdin"),
    ("stdin a number", {"request": {**PY, "stdin": 7}}, "validation_error", "stdin"),
    ("env a list", {"request": {**PY, "env": ["A=1"]}}, "validation_error", "env"),
    ("env name starts with a digit", {"request": {**PY, "env": {"1BAD": "v"}}}, "validation_error", "1BAD"),
    ("env name with a dash", {"request": {**PY, "env": {"MY-VAR": "v"}}}, "validation_error", "MY-VAR"),
    ("env name with =", {"request": {**PY, "env": {"A=B": "v"}}}, "validation_error", "env"),
    ("env value a number", {"request": {**PY, "env": {"A": 1}}}, "validation_error", "env"),
    ("metadata value a number", {"request": {**PY, "metadata": {"k": 1}}}, "validation_error", "metadata"),
    ("setupScript a number", {"request": {**PY, "setupScript": 1}}, "validation_error", "setupScript"),
    # files and outputPaths
    ("files a list", {"request": {**PY, "files": ["a.txt"]}}, "validation_error", "files"),
    ("file in /etc", {"request": {**PY, "files": {"/etc/passwd": "x"}}}, "path_outside_sandbox", "/etc/passwd"),
    ("file climbing out", {"request": {**PY, "files": {"../../etc/x": "x"}}}, "path_outside_sandbox", "outside"),
    ("file climbing out of /sandbox", {"request": {**PY, "files": {"/sandbox/../root/x": "x"}}},
     "path_outside_sandbox", "outside"),
    ("file named /sandbox itself", {"request": {**PY, "files": {"/sandbox": "x"}}}, "path_outside_sandbox",
     "outside"),
    ("file path with NUL", {"request": {**PY, "files": {"a\x00b": "x"}}}, "validation_error", "NUL"),
    ("file content a number", {"request": {**PY, "files": {"a.txt": 1}}}, "validation_error", "files"),
    ("too many files", {"request": {**PY, "files": {f"f{i}": "" for i in range(101)}}}, "validation_error",
     "100 files"),
    ("outputPaths a string", {"request": {**PY, "outputPaths": "/sandbox/out"}}, "validation_error",
     "outputPaths"),
    ("outputPath in /proc", {"request": {**PY, "outputPaths": ["/proc/self/environ"]}}, "path_outside_sandbox",
     "/proc/self/environ"),
    ("outputPath climbing out of /tmp", {"request": {**PY, "outputPaths": ["/tmp/../etc/shadow"]}},
     "path_outside_sandbox", "outside"),
    ("too many outputPaths", {"request": {**PY, "outputPaths": [f"o{i}" for i in range(101)]}},
     "validation_error", "outputPaths"),
    # workdir, fileExtension
    ("workdir in /etc", {"request": {**PY, "workdir": "/etc"}}, "path_outside_sandbox", "inside /sandbox"),
    ("workdir climbing out", {"request": {**PY, "workdir": "sub/../../.."}}, "path_outside_sandbox",
     "inside /sandbox"),
    ("fileExtension without a dot", {"request": {**PY, "fileExtension": "py"}}, "validation_error",
     "fileExtension"),
    ("fileExtension too long", {"request": {**PY, "fileExtension": "." + "x" * 17}}, "validation_error",
     "fileExtension"),
    ("fileExtension with a slash", {"request": {**PY, "fileExtension": ".p/y"}}, "validation_error",
     "fileExtension"),
    # request.timeoutMs
    ("timeoutMs negative", {"request": {**PY, "timeoutMs": -1}}, "validation_error", "timeoutMs"),
    ("timeoutMs zero", {"request": {**PY, "timeoutMs": 0}}, "validation_error", "timeoutMs"),
    ("timeoutMs a string", {"request": {**PY, "timeoutMs": "soon"}}, "validation_error", "timeoutMs"),
    ("timeoutMs a numeric string", {"request": {**PY, "timeoutMs": "1000"}}, "validation_error", "timeoutMs"),
    ("timeoutMs a float", {"request": {**PY, "timeoutMs": 1.5}}, "validation_error", "timeoutMs"),
    ("timeoutMs a boolean", {"request": {**PY, "timeoutMs": True}}, "validation_error", "timeoutMs"),
    ("timeoutMs huge", {"request": {**PY, "timeoutMs": 99999999999999}}, "validation_error", "timeoutMs"),
    # installPackages: names are checked before the tenant's policy
    ("installPackages a string", {"request": {**PY, "installPackages": "requests"}}, "validation_error",
     "installPackages"),
    ("package name with a shell", {"request": {**PY, "installPackages": ["requests; rm -rf /"]}},
     "validation_error", "installPackages"),
    ("package name an option", {"request": {**PY, "installPackages": ["--index-url=http://evil"]}},
     "validation_error", "installPackages"),
    ("package name too long", {"request": {**PY, "installPackages": ["a" * 201]}}, "validation_error",
     "installPackages"),
    ("too many packages", {"request": {**PY, "installPackages": [f"p{i}" for i in range(51)]}},
     "validation_error", "at most 50"),
    ("packages for bash", {"request": {"runtime": "bash", "code": "true", "installPackages": ["jq"]}},
     "validation_error", "bash"),
    # options
    ("unknown option", {"request": PY, "options": {"bogus": True}}, "validation_error", "bogus"),
    ("options.timeoutMs zero", {"request": PY, "options": {"timeoutMs": 0}}, "validation_error", "timeoutMs"),
    ("options.timeoutMs a string", {"request": PY, "options": {"timeoutMs": "10"}}, "validation_error",
     "timeoutMs"),
    ("memoryLimit not a size", {"request": PY, "options": {"memoryLimit": "lots"}}, "validation_error",
     "memoryLimit"),
    ("memoryLimit a boolean", {"request": PY, "options": {"memoryLimit": True}}, "validation_error",
     "memoryLimit"),
    ("memoryLimit zero", {"request": PY, "options": {"memoryLimit": 0}}, "validation_error", "memoryLimit"),
    ("memoryLimit negative", {"request": PY, "options": {"memoryLimit": "-1m"}}, "validation_error",
     "memoryLimit"),
    ("memoryLimit a list", {"request": PY, "options": {"memoryLimit": [512]}}, "validation_error",
     "memoryLimit"),
    ("memoryLimit astronomical", {"request": PY, "options": {"memoryLimit": "99999999999g"}}, "validation_error",
     "memoryLimit"),
    ("memoryLimit below the minimum", {"request": PY, "options": {"memoryLimit": "16m"}}, "validation_error",
     "memoryLimit"),
    ("sandboxSize not a size", {"request": PY, "options": {"sandboxSize": "huge"}}, "validation_error",
     "sandboxSize"),
    ("tmpSize not a size", {"request": PY, "options": {"tmpSize": {"mb": 1}}}, "validation_error", "tmpSize"),
    ("scratch space not below memory", {"request": PY, "options": {"memoryLimit": "256m", "sandboxSize": "200m",
                                                                   "tmpSize": "56m"}},
     "validation_error", "sandboxSize"),
    ("cpuLimit negative", {"request": PY, "options": {"cpuLimit": -2}}, "validation_error", "cpuLimit"),
    ("cpuLimit zero", {"request": PY, "options": {"cpuLimit": 0}}, "validation_error", "cpuLimit"),
    ("cpuLimit above 64", {"request": PY, "options": {"cpuLimit": 65}}, "validation_error", "cpuLimit"),
    ("cpuLimit a string", {"request": PY, "options": {"cpuLimit": "1"}}, "validation_error", "cpuLimit"),
    ("pidsLimit zero", {"request": PY, "options": {"pidsLimit": 0}}, "validation_error", "pidsLimit"),
    ("pidsLimit negative", {"request": PY, "options": {"pidsLimit": -1}}, "validation_error", "pidsLimit"),
    ("pidsLimit below 8", {"request": PY, "options": {"pidsLimit": 7}}, "validation_error", "pidsLimit"),
    ("pidsLimit above 65536", {"request": PY, "options": {"pidsLimit": 65537}}, "validation_error", "pidsLimit"),
    ("maxOutputSize zero", {"request": PY, "options": {"maxOutputSize": 0}}, "validation_error",
     "maxOutputSize"),
    ("maxOutputSize huge", {"request": PY, "options": {"maxOutputSize": MAX_INT + 1}}, "validation_error",
     "maxOutputSize"),
    ("network unknown", {"request": PY, "options": {"network": "everything"}}, "validation_error", "network"),
    ("secrets a string", {"request": PY, "options": {"secrets": "s"}}, "validation_error", "secrets"),
    ("secret name invalid", {"request": PY, "options": {"secrets": {"BAD-NAME": "v"}}}, "validation_error",
     "BAD-NAME"),
    ("secret value a number", {"request": PY, "options": {"secrets": {"TOKEN": 5}}}, "validation_error",
     "secrets"),
]


@pytest.mark.parametrize(("body", "code", "mentions"), [row[1:] for row in BAD_BODIES],
                         ids=[row[0] for row in BAD_BODIES])
def test_execute_refuses_a_bad_field_with_400_naming_it(api, fake_dispatch, tenant, route, body, code, mentions):
    response = post(api, route, body)
    assert_error(response, 400, code, mentions)
    assert_nothing_started(fake_dispatch, tenant=tenant)


def test_execute_refuses_more_secrets_than_allowed(api, fake_dispatch, tenant, route, settings):
    settings.ISOL8_MAX_SECRETS = 2
    secrets = {"A": "1", "B": "2", "C": "3"}
    assert_error(post(api, route, {"request": PY, "options": {"secrets": secrets}}), 400, "validation_error",
                 "secrets", "At most 2")
    assert_nothing_started(fake_dispatch, tenant=tenant)


def test_execute_refuses_a_secret_over_the_size_limit(api, fake_dispatch, tenant, route, settings):
    settings.ISOL8_MAX_SECRET_BYTES = 8
    # Bytes, not characters: four two-byte characters and a letter are 9 bytes.
    response = post(api, route, {"request": PY, "options": {"secrets": {"TOKEN": "éééé1"}}})
    assert_error(response, 400, "validation_error", "TOKEN", "8 bytes")
    assert_nothing_started(fake_dispatch, tenant=tenant)


def test_execute_refuses_a_runtime_the_server_has_no_image_for(api, fake_dispatch, tenant, route, settings):
    settings.ISOL8_RUNTIMES = ["bash"]
    response = post(api, route, {"request": PY})
    assert_error(response, 400, "unsupported_runtime", "python", "bash")
    assert_nothing_started(fake_dispatch, tenant=tenant)


# -------------------------------------------------------------------- policy

# (id, body, tenant fields, words); every row is a 403 policy_denied.
DENIED: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("remote code", {"request": {"runtime": "python", "codeUrl": "https://example.com/x.py"}}, {}, "Remote code"),
    ("writable root filesystem", {"request": PY, "options": {"readonlyRootFs": False}}, {}, "readonlyRootFs"),
    ("seccomp unconfined", {"request": PY, "options": {"security": {"seccomp": "unconfined"}}}, {}, "seccomp"),
    ("custom image", {"request": PY, "options": {"image": "ubuntu:latest"}}, {}, "image"),
    ("runtime not allowed", {"request": PY}, {"allowed_runtimes": ["bash"]}, "python"),
    ("request timeout above the cap", {"request": {**PY, "timeoutMs": 2000}}, {"max_timeout_ms": 1000}, "1000"),
    ("options timeout above the cap", {"request": PY, "options": {"timeoutMs": 10_000_000}}, {}, "timeoutMs"),
    ("memory above the cap", {"request": PY, "options": {"memoryLimit": "1g"}}, {"max_memory": 512 * 1024**2},
     "memoryLimit"),
    ("memory above the default cap", {"request": PY, "options": {"memoryLimit": "64g"}}, {}, "memoryLimit"),
    ("cpu above the cap", {"request": PY, "options": {"cpuLimit": 32}}, {}, "cpuLimit"),
    ("pids above the cap", {"request": PY, "options": {"pidsLimit": 300}}, {}, "pidsLimit"),
    ("output above the cap", {"request": PY, "options": {"maxOutputSize": 16 * 1024**2}}, {}, "maxOutputSize"),
    ("host network", {"request": PY, "options": {"network": "host"}}, {}, "network"),
    ("filtered network not allowed", {"request": PY, "options": {"network": "filtered"}}, {}, "filtered"),
    ("host network allowed but not served", {"request": PY, "options": {"network": "host"}},
     {"allowed_networks": ["none", "host"]}, "not available"),
    ("filtered to a host outside the tenant's egress hosts",
     {"request": PY, "options": {"network": "filtered", "networkFilter": {"whitelist": ["^evil\\.example$"]}}},
     {"allowed_networks": ["none", "filtered"], "egress_hosts": [r"^pypi\.org$"]}, "evil.example"),
    ("installs not allowed", {"request": {**PY, "installPackages": ["requests"]}}, {}, "installPackages"),
]


@pytest.mark.parametrize(("body", "tenant_fields", "mentions"), [row[1:] for row in DENIED],
                         ids=[row[0] for row in DENIED])
def test_execute_refuses_what_the_tenant_may_not_ask_with_403(
    api, fake_dispatch, tenant, route, body, tenant_fields, mentions
):
    for name, value in tenant_fields.items():
        setattr(tenant, name, value)
    tenant.save()
    response = post(api, route, body)
    assert_error(response, 403, "policy_denied", mentions)
    assert_nothing_started(fake_dispatch, tenant=tenant)


def test_execute_rejects_memory_above_tenant_cap(api, fake_dispatch, tenant):
    tenant.max_memory = 256 * 1024**2
    tenant.save()
    response = post(api, "/execute", {"request": PY, "options": {"memoryLimit": "257m"}})
    body = assert_error(response, 403, "policy_denied", "memoryLimit", str(256 * 1024**2))
    assert "257" not in body["error"] or "cap" in body["error"]
    assert_nothing_started(fake_dispatch, tenant=tenant)


def test_execute_names_bad_packages_before_the_install_policy(api, fake_dispatch, tenant):
    # allow_installs is off: a bad name is still a 400, a good one the 403.
    assert not tenant.allow_installs
    bad = post(api, "/execute", {"request": {**PY, "installPackages": ["requests", "$(curl evil)"]}})
    assert_error(bad, 400, "validation_error", "$(curl evil)")
    good = post(api, "/execute", {"request": {**PY, "installPackages": ["requests==2.31.0"]}})
    assert_error(good, 403, "policy_denied", "installPackages")
    assert_nothing_started(fake_dispatch, tenant=tenant)


def test_execute_limits_at_the_tenant_caps_are_accepted(api, fake_dispatch, tenant):
    tenant.max_timeout_ms, tenant.max_memory, tenant.max_cpu, tenant.max_pids = 5000, 256 * 1024**2, 1.5, 100
    tenant.max_output_size = 4096
    tenant.save()
    options = {"timeoutMs": 5000, "memoryLimit": "256m", "cpuLimit": 1.5, "pidsLimit": 100, "maxOutputSize": 4096}
    response = post(api, "/execute", {"request": PY, "options": options})
    assert response.status_code == 200, response.content
    assert len(fake_dispatch.runs()) == 1


def test_execute_accepts_the_options_isol8_clients_always_send(api, fake_dispatch):
    options = {"mode": "ephemeral", "network": "none", "networkFilter": {"whitelist": [], "blacklist": []},
               "memoryLimit": "512m", "cpuLimit": 1, "timeoutMs": 30000, "debug": False, "persist": False,
               "remoteCode": {"enabled": False}, "readonlyRootFs": True, "security": {"seccomp": "strict"},
               "poolStrategy": "fast", "poolSize": 1, "logNetwork": False, "audit": {}}
    response = post(api, "/execute", {"request": {**PY, "fileExtension": ".py"}, "options": options})
    assert response.status_code == 200, response.content


@pytest.mark.parametrize(
    "request_fields",
    [
        {"files": {"/tmp/x.txt": "x", "rel/y.txt": "y", "/sandbox/z": ""}},
        {"outputPaths": ["/sandbox/out.txt", "/tmp/o", "o2"]},
        {"workdir": "sub/dir"},
        {"workdir": "/sandbox"},
        {"env": {"_A": "", "B2": "x y"}, "stdin": "", "metadata": {"k": ""}},
    ],
)
def test_execute_accepts_paths_inside_the_sandbox(api, fake_dispatch, request_fields):
    response = post(api, "/execute", {"request": {**PY, **request_fields}})
    assert response.status_code == 200, response.content
