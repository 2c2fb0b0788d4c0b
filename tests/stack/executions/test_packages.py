"""installPackages behind the egress proxy, the per-tenant cache, prebuilt images, setup scripts."""

from __future__ import annotations

import json

import pytest

from executions.models import Execution
from sandbox import containers, images
from sandbox.config import PrebuiltImage
from tests.conftest import run
from tests.sse import iter_sse

pytestmark = pytest.mark.stack

NO_INTERNET = (
    "import socket\n"
    "try:\n"
    "    socket.create_connection(('pypi.org', 443), timeout=3)\n"
    "    print('online')\n"
    "except OSError:\n"
    "    print('offline')\n"
)


@pytest.fixture
def installer_tenant(tenant):
    tenant.allow_installs = True
    tenant.save()
    return tenant


def test_installs_need_the_tenants_permission(api):
    response = run(api, {"runtime": "python", "code": "import six", "installPackages": ["six"]})
    assert response.status_code == 403
    assert response.json()["code"] == "policy_denied"


@pytest.mark.parametrize(
    ("runtime", "name"),
    [("python", "six; rm -rf /"), ("python", "--index-url=http://evil"), ("python", "git+https://x/y"),
     ("node", "../../etc"), ("node", "http://evil/pkg.tgz"), ("bash", "curl")],
)
def test_invalid_package_names_are_refused_before_anything_starts(api, installer_tenant, stack, runtime, name):
    host = stack.env["ISOL8_WORKER_HOST"]
    before = ({c.id for c in containers.list_managed(host=host, role="installer")}, Execution.objects.count())
    response = run(api, {"runtime": runtime, "code": "true", "installPackages": [name]})
    assert response.status_code == 400, response.text
    assert "installPackages" in response.json()["error"]
    assert ({c.id for c in containers.list_managed(host=host, role="installer")}, Execution.objects.count()) == before


def test_python_package_installs_then_comes_from_the_cache_and_code_stays_offline(api, installer_tenant):
    code = "import six\nprint(six.__name__)\n" + NO_INTERNET
    first = run(api, {"runtime": "python", "code": code, "installPackages": ["six"]})
    assert first.status_code == 200, first.text
    assert first.json()["stdout"] == "six\noffline"
    second = run(api, {"runtime": "python", "code": code, "installPackages": ["six"]})
    assert second.json()["stdout"] == "six\noffline"
    sources = [Execution.objects.get(pk=r.json()["executionId"]).package_source for r in (first, second)]
    assert sources == ["install", "cache"]


def test_npm_package_installs_for_node_and_code_stays_offline(api, installer_tenant):
    code = (
        "const isNumber = require('is-number');\n"
        "console.log(isNumber(5), isNumber('x'));\n"
        "const net = require('net');\n"
        "const s = net.connect(443, 'registry.npmjs.org');\n"
        "s.on('connect', () => { console.log('online'); s.destroy(); });\n"
        "s.on('error', () => console.log('offline'));\n"
    )
    request = {"runtime": "node", "code": code, "fileExtension": ".cjs", "installPackages": ["is-number@7.0.0"]}
    response = run(api, request)
    assert response.status_code == 200, response.text
    assert response.json()["stdout"] == "true false\noffline"
    again = run(api, request).json()
    assert again["stdout"] == "true false\noffline"
    assert Execution.objects.get(pk=again["executionId"]).package_source == "cache"


def test_a_failed_install_is_a_clear_error(api, installer_tenant):
    response = run(api, {"runtime": "python", "code": "print(1)",
                         "installPackages": ["isol8-no-such-package-4f2b9c"]})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "install_failed"
    assert body["error"].startswith("Package install failed (exit code 1)")
    assert "isol8-no-such-package-4f2b9c" in body["error"]


def test_install_output_streams_as_setup_phase_before_the_code(api, installer_tenant):
    body = {"request": {"runtime": "python", "code": "import six; print('code ran')",
                        "installPackages": ["six==1.16.0"]}}
    with api.stream("POST", "/execute/stream", json=body) as response:
        events = [e.json for e in iter_sse(response)]
    phases = [e.get("phase") for e in events if e["type"] in ("stdout", "stderr")]
    assert "setup" in phases and phases.index("code") > phases.index("setup")
    assert events[-1] == {"type": "exit", "data": "0", "phase": "code"}


def test_setup_script_output_comes_first_and_is_masked(api):
    body = {
        "request": {"runtime": "bash", "code": "cat /sandbox/prepared.txt",
                    "setupScript": "echo preparing tok-secret-123; echo ready > /sandbox/prepared.txt"},
        "options": {"secrets": {"TOKEN": "tok-secret-123"}},
    }
    with api.stream("POST", "/execute/stream", json=body) as response:
        events = [e.json for e in iter_sse(response)]
    assert events[0] == {"type": "stdout", "data": "preparing ***\n", "phase": "setup"}
    assert {"type": "stdout", "data": "ready\n", "phase": "code"} in events
    assert "tok-secret-123" not in json.dumps(events)


def test_failing_setup_script_stops_the_run(api):
    request = {"runtime": "bash", "code": "echo never", "setupScript": "echo nope >&2; exit 3"}
    response = run(api, request)
    assert response.status_code == 422
    assert response.json() == {"error": "Setup script failed (exit code 3): nope", "code": "setup_failed"}
    with api.stream("POST", "/execute/stream", json={"request": request}) as r:
        events = [e.json for e in iter_sse(r)]
    assert events[-2:] == [
        {"type": "error", "data": "Setup script failed (exit code 3)", "phase": "setup"},
        {"type": "exit", "data": "3", "phase": "setup"},
    ]
    assert all(e.get("data") != "never\n" for e in events)


def test_workdir_and_file_extension(api):
    body = run(api, {"runtime": "bash", "code": "pwd; echo $0", "workdir": "sub/dir", "fileExtension": ".bash"}).json()
    assert body["stdout"].splitlines() == ["/sandbox/sub/dir", "/sandbox/main.bash"]


def test_prebuilt_image_is_used_when_it_covers_the_packages(stack, installer_tenant, tmp_path):
    from tests.conftest import make_key

    tag = "isol8-test-prebuilt-six:1"
    images.build_prebuilt(PrebuiltImage(tag=tag, runtime="python", packages=("six",)), log=lambda line: None)
    config = tmp_path / "isol8.config.json"
    config.write_text(json.dumps({"prebuiltImages": [
        {"tag": tag, "runtime": "python", "installPackages": ["six"], "setupScript": "echo baked > /tmp/baked"}]}))
    stack.stop("worker")
    stack.start_worker("worker-prebuilt", ISOL8_CONFIG=str(config))
    try:
        stack.wait_healthy()
        with stack.client(make_key(installer_tenant)) as api:
            response = run(api, {"runtime": "python", "code": "import six; print(open('/tmp/baked').read())",
                                 "installPackages": ["six"]})
        assert response.status_code == 200, response.text
        assert response.json()["stdout"] == "baked"
        row = Execution.objects.get(pk=response.json()["executionId"])
        assert row.package_source == f"prebuilt:{tag}"
        assert containers.container_attrs(row.container_id)["Config"]["Image"] == tag
    finally:
        stack.stop("worker-prebuilt")
        stack.start_worker()
        stack.wait_healthy()
