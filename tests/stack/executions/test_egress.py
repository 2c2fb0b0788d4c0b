"""network "filtered" through the real stack: the egress gateway, the sandbox's relay, policies and logs.

These reach the real package registries (pypi.org and its files host), the
only outside hosts these machines are sure to reach; every refusal is
checked from inside the sandbox and in the run's network log.
"""

from __future__ import annotations

import json

import pytest

from executions.models import Execution
from tests.conftest import run, wait_for

pytestmark = pytest.mark.stack

PYPI = [r"^pypi\.org$", r"^files\.pythonhosted\.org$"]

# Each probe prints one JSON line: what happened when the code tried.
FETCH = """
import json, sys, urllib.request, urllib.error
url = sys.argv[1] if len(sys.argv) > 1 else URL
try:
    with urllib.request.urlopen(url, timeout=20) as r:
        print(json.dumps({"status": r.status, "bytes": len(r.read())}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "egress": e.headers.get("X-Isol8-Egress")}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__, "text": str(e)[:200]}))
"""

RAW = """
import json, socket
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "reached"
    except OSError as e:
        out[name] = type(e).__name__ + ":" + str(e.errno)
def tcp(host, port):
    socket.create_connection((host, port), timeout=3).close()
def udp_dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x04pypi\\x03org\\x00\\x00\\x01\\x00\\x01",
             ("8.8.8.8", 53))
    s.recvfrom(512)
attempt("resolve", lambda: socket.getaddrinfo("pypi.org", 443))
attempt("dns_udp", udp_dns)
attempt("ip_literal", lambda: tcp("151.101.0.223", 443))
attempt("bridge_gateway", lambda: tcp(GATEWAY, 22))
attempt("metadata", lambda: tcp("169.254.169.254", 80))
attempt("ipv6", lambda: socket.create_connection(("2606:4700:4700::1111", 443), timeout=3).close())
attempt("host_redis", lambda: tcp(GATEWAY, REDIS_PORT))
attempt("relay", lambda: tcp("127.0.0.1", 3128))
out["interfaces"] = sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:])
print(json.dumps(out))
"""


@pytest.fixture
def filtered_tenant(tenant):
    tenant.allowed_networks = ["none", "filtered"]
    tenant.save()
    return tenant


def filtered(api, code, *, whitelist=None, blacklist=None, log=True, timeout_ms=None, **extra):
    network_filter = {}
    if whitelist is not None:
        network_filter["whitelist"] = whitelist
    if blacklist is not None:
        network_filter["blacklist"] = blacklist
    options = {"network": "filtered", "networkFilter": network_filter, "logNetwork": log}
    request = {"runtime": "python", "code": code}
    if timeout_ms is not None:
        request["timeoutMs"] = timeout_ms
    return run(api, request, options, **extra)


def fetch(url: str) -> str:
    return f"URL = {url!r}\n{FETCH}"


def last_json(body: dict) -> dict:
    return json.loads(body["stdout"].strip().splitlines()[-1])


def lane_dirs() -> list[str]:
    from django.conf import settings

    root = settings.ISOL8_EGRESS_DIR
    return sorted(str(p) for p in root.glob("*/*")) if root.is_dir() else []


def bridge_gateway() -> str:
    from sandbox import dockerapi

    network = dockerapi.client().networks.get("bridge")
    return network.attrs["IPAM"]["Config"][0]["Gateway"]


def test_an_allowed_registry_is_reached_and_logged(filtered_tenant, api):
    response = filtered(api, fetch("https://pypi.org/simple/six/"), whitelist=PYPI)
    assert response.status_code == 200, response.text
    body = response.json()
    assert last_json(body)["status"] == 200, body
    (entry,) = body["networkLogs"]
    assert (entry["method"], entry["host"], entry["port"], entry["action"]) == ("CONNECT", "pypi.org", 443, "ALLOW")
    assert entry["bytesDown"] > 1000 and entry["durationMs"] >= 0
    stored = Execution.objects.get(pk=body["executionId"])
    assert stored.network_log["totals"]["allowed"] == 1


def test_pip_download_works_unchanged_through_the_proxy(filtered_tenant, api):
    code = (
        "import subprocess, sys\n"
        "r = subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-cache-dir',\n"
        "                    '--disable-pip-version-check', '-d', '/sandbox/dl', 'six==1.16.0'],\n"
        "                   capture_output=True, text=True)\n"
        "import os\n"
        "print(r.returncode, sorted(os.listdir('/sandbox/dl')) if os.path.isdir('/sandbox/dl') else r.stderr[-500:])\n"
    )
    response = filtered(api, code, whitelist=PYPI, timeout_ms=60_000)
    body = response.json()
    assert body["stdout"].strip() == "0 ['six-1.16.0-py2.py3-none-any.whl']", body
    hosts = {(e["host"], e["action"]) for e in body["networkLogs"]}
    assert hosts == {("pypi.org", "ALLOW"), ("files.pythonhosted.org", "ALLOW")}


@pytest.mark.parametrize(("url", "whitelist", "blacklist", "reason"), [
    ("https://registry.npmjs.org/", PYPI, None, "not_whitelisted"),
    ("https://files.pythonhosted.org/", [r"\.org$"], [r"^files\."], "blacklisted"),
    ("http://151.101.0.223/", [".*"], None, "ip_literal"),
    ("https://localhost/", [".*"], None, "private_address"),
    ("https://pypi.org:8443/", PYPI, None, "port_not_allowed"),
])
def test_what_the_filter_refuses_fails_in_the_sandbox_and_is_logged(filtered_tenant, api, url, whitelist, blacklist,
                                                                      reason):
    body = filtered(api, fetch(url), whitelist=whitelist, blacklist=blacklist).json()
    outcome = last_json(body)
    # urllib reports a refused CONNECT as an OSError ("Tunnel connection failed: 403"), a
    # refused plain request as the gateway's 403 answer.
    assert outcome.get("egress") == reason or "403" in outcome.get("text", ""), outcome
    (entry,) = body["networkLogs"]
    assert (entry["action"], entry["reason"]) == ("BLOCK", reason), entry


def test_nothing_but_the_relay_is_reachable_by_construction(filtered_tenant, api, stack):
    code = RAW.replace("GATEWAY", repr(bridge_gateway())).replace("REDIS_PORT", "6379")
    body = filtered(api, code, whitelist=[".*"]).json()
    out = last_json(body)
    assert out.pop("interfaces") == ["lo"]
    assert out.pop("relay") == "reached"
    assert all(verdict != "reached" for verdict in out.values()), out
    # Only the probe of the relay reached the gateway (and said nothing: a bad request).
    assert [(e["action"], e["reason"]) for e in body["networkLogs"]] == [("BLOCK", "bad_request")]


def test_network_none_is_unchanged(api):
    code = RAW.replace("GATEWAY", repr(bridge_gateway())).replace("REDIS_PORT", "6379")
    code += "import os\nprint(json.dumps(sorted(k for k in os.environ if 'proxy' in k.lower())))\n"
    body = run(api, {"runtime": "python", "code": code}).json()
    lines = body["stdout"].strip().splitlines()
    out, proxies = json.loads(lines[-2]), json.loads(lines[-1])
    assert out["interfaces"] == ["lo"] and out["relay"] != "reached" and proxies == []
    assert "networkLogs" not in body


def test_a_tenant_policy_bounds_what_a_request_may_whitelist(filtered_tenant, api):
    filtered_tenant.egress_hosts = [r"^pypi\.org$"]
    filtered_tenant.save()
    outside = filtered(api, fetch("https://registry.npmjs.org/"), whitelist=["registry.npmjs.org"])
    assert outside.status_code == 403 and outside.json()["code"] == "policy_denied", outside.text
    # A pattern that is not a plain host is narrowed when the connection is made.
    body = filtered(api, fetch("https://files.pythonhosted.org/"), whitelist=[r".*\.org$"]).json()
    assert body["networkLogs"][0]["reason"] == "tenant_policy"
    assert last_json(filtered(api, fetch("https://pypi.org/simple/"), whitelist=[r".*\.org$"]).json())["status"] == 200


def test_filtered_needs_the_tenants_permission(api):
    response = filtered(api, "print(1)", whitelist=PYPI)
    assert response.status_code == 403 and response.json()["code"] == "policy_denied"


def test_a_bad_pattern_is_a_400(filtered_tenant, api):
    response = filtered(api, "print(1)", whitelist=["pypi(.org"])
    assert response.status_code == 400 and "whitelist" in response.json()["error"]


def test_the_log_is_kept_with_the_execution_and_log_network_only_adds_it_to_the_result(filtered_tenant, api):
    body = filtered(api, fetch("https://registry.npmjs.org/"), whitelist=PYPI, log=False).json()
    assert "networkLogs" not in body
    detail = api.get(f"/executions/{body['executionId']}").json()
    assert detail["networkLog"]["entries"][0]["reason"] == "not_whitelisted"
    assert detail["networkLog"]["totals"]["blocked"] == 1


def test_a_session_keeps_its_network_and_reaches_out_in_each_run(filtered_tenant, api):
    first = filtered(api, fetch("https://pypi.org/simple/six/"), whitelist=PYPI, sessionId="net").json()
    assert last_json(first)["status"] == 200, first
    again = filtered(api, fetch("https://pypi.org/simple/pip/"), whitelist=PYPI, sessionId="net").json()
    assert last_json(again)["status"] == 200 and again["networkLogs"][0]["action"] == "ALLOW"
    switched = run(api, {"runtime": "python", "code": "print(1)"}, {"network": "none"}, sessionId="net")
    assert switched.status_code == 400, switched.text
    lanes = lane_dirs()
    assert len(lanes) >= 1
    api.delete("/session/net")
    # Its lane goes with its container.
    assert wait_for(lambda: len(lane_dirs()) == len(lanes) - 1, 20), lane_dirs()


@pytest.mark.parametrize(("runtime", "code"), [
    ("node", "const r = await fetch('https://pypi.org/simple/six/'); console.log(r.status)"),
    ("bun", "const r = await fetch('https://pypi.org/simple/six/'); console.log(r.status)"),
    ("deno", "const r = await fetch('https://pypi.org/simple/six/'); await r.body?.cancel(); console.log(r.status)"),
    # Plain HTTP by hand: whatever the origin answers (this machine's mirror: 404) came from it.
    ("bash", "exec 3<>/dev/tcp/127.0.0.1/3128; printf 'GET http://pypi.org/simple/six/ HTTP/1.1\\r\\n"
             "Host: pypi.org\\r\\n\\r\\n' >&3; head -1 <&3 | cut -d' ' -f2"),
])
def test_every_runtimes_ordinary_client_goes_through(filtered_tenant, api, runtime, code):
    options = {"network": "filtered", "networkFilter": {"whitelist": PYPI}, "logNetwork": True}
    body = run(api, {"runtime": runtime, "code": code, "timeoutMs": 30_000}, options).json()
    status = body.get("stdout", "").strip().splitlines()[-1:]
    assert status == ["200"] or (runtime == "bash" and status[0].isdigit()), body
    assert body["stderr"] == "", body["stderr"]
    (entry,) = body["networkLogs"]
    method = "GET" if runtime == "bash" else "CONNECT"
    assert (entry["method"], entry["host"], entry["action"]) == (method, "pypi.org", "ALLOW"), entry


def test_a_connection_ends_with_its_run(filtered_tenant, api):
    code = (
        "import socket, time\n"
        "s = socket.create_connection(('127.0.0.1', 3128))\n"
        "s.sendall(b'CONNECT pypi.org:443 HTTP/1.1\\r\\n\\r\\n')\n"
        "print(s.recv(100).split(b'\\r\\n')[0].decode(), flush=True)\n"
        "time.sleep(60)\n"
    )
    # A timeout with room for a loaded machine (exec mode starts each run with docker exec).
    body = filtered(api, code, whitelist=PYPI, timeout_ms=6000).json()
    assert body["status"] == "timeout" and body["stdout"].strip() == "HTTP/1.1 200 Connection established", body
    (entry,) = body["networkLogs"]
    # The tunnel was open when the run timed out: it closed with the run, not a minute later.
    assert entry["action"] == "ALLOW" and entry["durationMs"] < 9000, entry


def test_the_tenants_caps_bound_a_run_and_its_month_adds_up(filtered_tenant, api):
    from tenants.quotas import egress_usage

    filtered_tenant.max_egress_connections = 1
    filtered_tenant.save()
    before = egress_usage(tenant=filtered_tenant)
    twice = fetch("https://pypi.org/simple/six/") + FETCH  # the same fetch, twice
    body = filtered(api, twice, whitelist=PYPI).json()
    first, second = (json.loads(line) for line in body["stdout"].strip().splitlines())
    assert first["status"] == 200, body
    assert "429" in second.get("text", ""), second  # urllib: "Tunnel connection failed: 429 ..."
    assert [e["reason"] for e in body["networkLogs"]] == ["", "connection_limit"]
    after = egress_usage(tenant=filtered_tenant)
    assert (after["allowed"] - before["allowed"], after["blocked"] - before["blocked"]) == (1, 1)
    assert after["bytesDown"] - before["bytesDown"] == body["networkLogs"][0]["bytesDown"]


def test_a_filtered_session_reaches_out_again_after_a_worker_restart(filtered_tenant, api, stack):
    first = filtered(api, fetch("https://pypi.org/simple/six/"), whitelist=PYPI, sessionId="net-restart").json()
    assert last_json(first)["status"] == 200, first
    stack.stop("worker")
    stack.start_worker()
    stack.wait_healthy()
    # The new worker re-attaches the container and listens on its lane again.
    again = filtered(api, fetch("https://pypi.org/simple/six/"), whitelist=PYPI, sessionId="net-restart").json()
    assert last_json(again)["status"] == 200, again
    api.delete("/session/net-restart")
