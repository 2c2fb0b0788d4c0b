"""Hardening (issue 13): fork bombs, FIFOs, symlinks, uids, bounded bodies, outputs and events, bad input.

Each test reproduces one item of the red-team list through the real stack and
asserts the fixed behaviour (the numbers in the docstrings are the issue's).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time

import httpx
import pytest
from django.conf import settings

from executions.models import Execution
from isol8_site.redis import get_events_redis, get_redis
from sandbox import containers, dockerapi
from sessions_app.models import Session
from tenants.services import tenant_create
from tests.conftest import make_key, one_mode, run

pytestmark = pytest.mark.stack

PYTHON_FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
BASH_FORK_BOMB = ":(){ :|:& };:"


def put(api, session_id, path, content: bytes, timeout: float = 60):
    return api.post("/file", json={"sessionId": session_id, "path": path,
                                   "content": base64.b64encode(content).decode()}, timeout=timeout)


# ------------------------------------------------------------ 1. fork bombs


def test_a_python_fork_bomb_times_out_and_the_next_runs_are_fine(api, stack):
    started = time.monotonic()
    response = run(api, {"runtime": "python", "code": PYTHON_FORK_BOMB, "timeoutMs": 5000})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["exitCode"], body["timedOut"]) == ("timeout", 137, True), body
    assert body["stderr"].endswith("--- EXECUTION TIMED OUT ---")
    assert time.monotonic() - started < 20
    container_id = Execution.objects.get(pk=body["executionId"]).container_id
    deadline = time.monotonic() + 10
    while containers.container_running(container_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not containers.container_running(container_id)  # never reused
    assert run(api, {"runtime": "python", "code": "print('next')"}).json()["stdout"] == "next"
    with stack.client(make_key(tenant_create(slug=f"other-{time.monotonic_ns()}"))) as other:
        assert run(other, {"runtime": "python", "code": "print('other')"}).json()["stdout"] == "other"


def test_a_bash_fork_bomb_never_ends_as_an_error(api):
    body = run(api, {"runtime": "bash", "code": BASH_FORK_BOMB, "timeoutMs": 5000}).json()
    # The script itself returns at once; what it left is killed and its sandbox destroyed.
    assert body["status"] in ("ok", "timeout"), body
    assert run(api, {"runtime": "bash", "code": "echo next"}).json()["stdout"] == "next"


def test_a_fork_bomb_in_a_session_is_stopped_and_the_session_goes_on(api):
    body = run(api, {"runtime": "python", "code": PYTHON_FORK_BOMB, "timeoutMs": 3000}, sessionId="bomb").json()
    assert (body["status"], body["exitCode"]) == ("timeout", 137), body
    after = run(api, {"runtime": "python", "code": "print('alive')"}, sessionId="bomb").json()
    assert after["stdout"] == "alive", after
    api.delete("/session/bomb")


# ------------------------------------------------------------ 2. FIFOs and wedged sessions


def test_uploading_onto_a_fifo_is_refused_at_once_and_the_session_stays_usable(api):
    assert run(api, {"runtime": "bash", "code": "mkfifo /sandbox/fifo"}, sessionId="fifo").json()["exitCode"] == 0
    started = time.monotonic()
    refused = put(api, "fifo", "/sandbox/fifo", b"x")
    assert refused.status_code == 400 and refused.json()["code"] == "validation_error", refused.text
    assert "regular file" in refused.json()["error"]
    fetched = api.get("/file", params={"sessionId": "fifo", "path": "/sandbox/fifo"})
    assert fetched.status_code == 404
    assert time.monotonic() - started < 5
    assert put(api, "fifo", "/sandbox/ok.txt", b"fine").status_code == 200
    assert run(api, {"runtime": "bash", "code": "cat ok.txt"}, sessionId="fifo").json()["stdout"] == "fine"
    api.delete("/session/fifo")


def test_a_session_whose_launcher_stops_answering_is_ended_cleanly(api, tenant):
    assert run(api, {"runtime": "bash", "code": "true"}, sessionId="wedged").json()["exitCode"] == 0
    session = Session.objects.get(tenant=tenant, session_id="wedged")
    dockerapi.client().api.pause(session.container_id)  # its launcher can answer nothing now
    started = time.monotonic()
    answer = put(api, "wedged", "/sandbox/x", b"x")
    assert answer.status_code == 409 and answer.json()["code"] == "session_dead", answer.text
    assert time.monotonic() - started < settings.ISOL8_FILE_OP_TIMEOUT + 10
    session.refresh_from_db()
    assert session.state == "dead"
    assert not containers.container_running(session.container_id)
    # Later calls say so at once, runs and file operations alike.
    started = time.monotonic()
    assert put(api, "wedged", "/sandbox/x", b"x").json()["code"] == "session_dead"
    assert run(api, {"runtime": "bash", "code": "true"}, sessionId="wedged").json()["code"] == "session_dead"
    assert time.monotonic() - started < 3
    api.delete("/session/wedged")


@one_mode
def test_file_operations_count_against_the_tenants_concurrency(stack, tenant):
    key = make_key(tenant)
    with stack.client(key) as api:
        assert run(api, {"runtime": "bash", "code": "true"}, sessionId="files-quota").json()["exitCode"] == 0
        tenant.max_concurrent = 1
        tenant.save()
        slow = threading.Thread(target=lambda: run(api, {"runtime": "bash", "code": "sleep 3"}))
        slow.start()
        time.sleep(1)
        refused = put(api, "files-quota", "/sandbox/x", b"x")
        slow.join()
        assert refused.status_code == 429 and refused.json()["code"] == "quota_exceeded", refused.text
        assert put(api, "files-quota", "/sandbox/x", b"x").status_code == 200
        api.delete("/session/files-quota")


# ------------------------------------------------------------ 3. /tmp paths, 8. outputPaths


def test_tmp_paths_do_not_follow_symlinks_out(api):
    setup = "ln -s /proc/self /tmp/pd; ln -s /proc/self/status /tmp/st; ln -s /etc /tmp/etc; echo ok"
    assert run(api, {"runtime": "bash", "code": setup}, sessionId="tmp-links").json()["stdout"] == "ok"
    body = run(api, {"runtime": "bash", "code": "true",
                     "outputPaths": ["/tmp/pd/status", "/tmp/pd/maps", "/tmp/pd/cmdline", "/tmp/st"]},
               sessionId="tmp-links").json()
    assert body["files"] == {}, body
    written = run(api, {"runtime": "bash", "code": "ls /etc/evil 2>&1", "files": {"/tmp/etc/evil": "x"}},
                  sessionId="tmp-links")
    assert written.status_code == 200
    assert written.json()["status"] == "error" or "No such file" in written.json()["stdout"]
    api.delete("/session/tmp-links")


def test_output_paths_are_capped_in_total_and_count_each_file_once(api):
    code = ("head -c 1048576 /dev/zero > big; for i in $(seq 1 40); do ln -s big l$i; ln big h$i; done; "
            "mkfifo fifo; echo done")
    paths = ["big", "fifo", *(f"l{i}" for i in range(1, 41)), *(f"h{i}" for i in range(1, 41))]
    response = run(api, {"runtime": "bash", "code": code, "outputPaths": paths})
    assert len(response.content) < 2 * 1024 * 1024, len(response.content)
    files = response.json()["files"]
    assert list(files) == ["/sandbox/big"]  # symlinks not followed, hard links counted once, no FIFO
    row = Execution.objects.get(pk=response.json()["executionId"])
    assert len(json.dumps(row.files)) < 2 * 1024 * 1024


# ------------------------------------------------------------ 4. capabilities and mounts, 5. uids


def test_pid_1_is_the_images_init_and_nothing_of_the_host_is_mounted(api):
    code = "tr '\\0' ' ' < /proc/1/cmdline; echo; grep -c docker-init /proc/self/mountinfo || true; ulimit -q"
    lines = run(api, {"runtime": "bash", "code": code}).json()["stdout"].splitlines()
    assert lines[0].startswith("/usr/bin/tini --"), lines
    assert lines[1] == "0"
    assert int(lines[2]) == settings.ISOL8_MSGQUEUE  # RLIMIT_MSGQUEUE, in bytes


def test_each_sandbox_has_a_uid_of_its_own_so_per_user_limits_are_not_shared(stack, api, tenant):
    hog = (
        "import ctypes, os, time\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "fds = [libc.inotify_init1(0) for _ in range(200)]\n"
        "print(sum(fd >= 0 for fd in fds), os.getuid(), flush=True)\n"
        "time.sleep(60)\n"
    )
    start = ("setsid python3 hog.py > hog.out 2>&1 < /dev/null & "
             "for i in $(seq 50); do [ -s hog.out ] && break; sleep 0.1; done; cat hog.out")
    started = run(api, {"runtime": "bash", "code": start, "files": {"hog.py": hog}}, sessionId="inotify-hog").json()
    held, hog_uid = started["stdout"].split()
    assert int(held) > 100  # it took (nearly) all its uid's inotify instances (128 here), and keeps them
    other_tenant = tenant_create(slug=f"victim-{time.monotonic_ns()}")
    with stack.client(make_key(other_tenant)) as victim:
        probe = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                 "print(libc.inotify_init1(0) >= 0, os.getuid())\n")
        body = run(victim, {"runtime": "python", "code": probe}).json()
    ok, victim_uid = body["stdout"].split()
    assert ok == "True" and victim_uid != hog_uid
    api.delete("/session/inotify-hog")


# ------------------------------------------------------------ 7. request bodies and heads


def raw_request(stack, head: bytes, body: bytes = b"", *, wait: float = 10.0) -> tuple[bytes, float]:
    """Send bytes on a fresh connection; return what came back before it closed, and how long it took."""
    port = int(stack.url.rsplit(":", 1)[1])
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as conn:
        try:
            conn.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused and closed before taking it all
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received, time.monotonic() - started


@one_mode
def test_a_body_declared_over_the_limit_is_413_before_it_is_sent(stack, api_key):
    head = (f"POST /execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {40 * 1024 * 1024}\r\n\r\n").encode()
    received, took = raw_request(stack, head)
    assert received.startswith(b"HTTP/1.1 413"), received[:200]
    assert b'"payload_too_large"' in received and took < 5


@one_mode
def test_a_body_without_a_key_is_refused_before_it_is_read(stack):
    head = (b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    received, took = raw_request(stack, head, b"100000\r\n" + b"x" * 4096)
    assert received.startswith(b"HTTP/1.1 401"), received[:200]
    assert took < 5


@one_mode
def test_a_chunked_body_over_the_limit_is_413(stack, api_key):
    chunk = b"x" * (1024 * 1024)
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    head = (f"POST /execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    received, _ = raw_request(stack, head, body)
    assert received.startswith(b"HTTP/1.1 413"), received[:200]


@one_mode
def test_a_body_that_never_arrives_is_cut_off(stack, api_key):
    head = (f"POST /execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n").encode()
    received, took = raw_request(stack, head, b"{" * 1000, wait=30)
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert settings.ISOL8_BODY_TIMEOUT <= took < settings.ISOL8_BODY_TIMEOUT + 5


@one_mode
def test_slow_and_huge_request_heads_are_refused(stack):
    port = int(stack.url.rsplit(":", 1)[1])
    # Slow loris: a head that never ends.
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        closed_at = None
        try:
            for _ in range(30):
                conn.sendall(b"X-Slow: 1\r\n")
                if conn.recv(65536, socket.MSG_DONTWAIT) == b"":
                    break
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass
        try:
            while conn.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError, BlockingIOError):
            pass
        closed_at = time.monotonic() - started
    assert closed_at < float(stack.env.get("ISOL8_HEAD_TIMEOUT", "10")) + 5
    # An 8 MiB header: refused (an answer, or the connection reset) long before it is all sent.
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 * 1024 * 1024) + b"\r\n\r\n"
    received, _ = raw_request(stack, big)
    assert received == b"" or received.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), received[:200]
    assert b'"status":"ok"' not in received


# ------------------------------------------------------------ 9. events in Redis


@one_mode
def test_events_cost_about_their_output_in_redis_and_redis_is_bounded(api):
    code = "import sys\nfor i in range(8192):\n    print('é' * 63)\n"  # 1 MiB of UTF-8 output
    with api.stream("POST", "/execute/stream", json={"request": {"runtime": "python", "code": code}},
                    headers={"Accept": "text/event-stream"}) as response:
        execution_id = response.headers["X-Execution-Id"]
        response.read()
    key = f"isol8:events:execution-{execution_id}"
    records = get_events_redis().lrange(key, 0, -1)
    used = get_events_redis().memory_usage(key, samples=0)
    output = 8192 * (63 * 2 + 1)
    # Encoded once, as UTF-8: a record is its output (each newline escaped as two bytes)
    # plus a small fixed envelope.
    assert sum(len(r) for r in records) < output + 8192 + 64 * len(records), (len(records), output)
    assert used < 1.5 * output, (used, output, len(records))
    events_config = get_events_redis().config_get("maxmemory*")
    assert int(events_config["maxmemory"]) > 0 and events_config["maxmemory-policy"] == "allkeys-lru"
    main_config = get_redis().config_get("maxmemory-policy")
    assert main_config["maxmemory-policy"] == "noeviction"  # broker and quota keys are never evicted


# ------------------------------------------------------------ 10. secrets


@one_mode
def test_secrets_are_capped_and_masked(api):
    too_many = {f"S{i}": "x" * 10 for i in range(settings.ISOL8_MAX_SECRETS + 1)}
    refused = run(api, {"runtime": "bash", "code": "true"}, {"secrets": too_many})
    assert refused.status_code == 400 and "secrets" in refused.json()["error"]
    too_big = run(api, {"runtime": "bash", "code": "true"}, {"secrets": {"S": "x" * (32 * 1024)}})
    assert too_big.status_code == 400
    secrets = {f"S{i}": f"{i:02d}" + "k" * (settings.ISOL8_MAX_SECRET_BYTES - 2) for i in range(10)}
    code = "for i in 0 1 2 3 4 5 6 7 8 9; do v=S$i; printf '%s|' \"${!v}\"; done"
    body = run(api, {"runtime": "bash", "code": code}, {"secrets": secrets}).json()
    assert body["stdout"] == "***|" * 10


# ------------------------------------------------------------ 12. bad input


@one_mode
@pytest.mark.parametrize(
    ("body", "status", "mentions"),
    [
        (b'{"request":{"runtime":"python","code":"x"},"options":{"memoryLimit":"' + b"9" * 400 + b'"}}', 400,
         "memoryLimit"),
        (b'{"request":{"runtime":"python","code":"x"},"options":{"memoryLimit":' + b"9" * 400 + b"}}", 400,
         "memoryLimit"),
        (b"[" * 2000 + b"]" * 2000, 400, "JSON"),
        (b'{"request":{"runtime":"python","code":"x","files":{"/tmp/a\\u0000b":"x"}}}', 400, "NUL"),
        (b'{"request":{"runtime":"python","code":"x","timeoutMs":"10"}}', 400, "timeoutMs"),
        (b'{"request":{"runtime":" python","code":"x"}}', 400, "python"),
        (b'{"request":{"runtime":"python","code":"x"},"options":{"cpuLimit":"1"}}', 400, "cpuLimit"),
        (b'{"request":{"runtime":"python","code":"x"},"options":{"pidsLimit":64.0}}', 400, "pidsLimit"),
        (b'{"request":{"runtime":"python","code":"x","allowInsecureCodeUrl":"true"}}', 400, "allowInsecureCodeUrl"),
        (b'{"request":{"runtime":"python","code":"x"},"sessionId":" s"}', 400, "sessionId"),
    ],
)
def test_bad_input_is_a_400_naming_what_is_wrong_never_a_500(api, body, status, mentions):
    response = api.post("/execute", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert mentions in response.json()["error"], response.text


# ------------------------------------------------------------ 13. streams that end


@one_mode
def test_a_stream_past_the_end_of_a_finished_run_ends_at_once(api):
    with api.stream("POST", "/execute/stream", json={"request": {"runtime": "bash", "code": "echo a"}}) as r:
        execution_id = r.headers["X-Execution-Id"]
        r.read()
    started = time.monotonic()
    with api.stream("GET", f"/executions/{execution_id}/events", headers={"Last-Event-ID": "1000000"}) as r:
        assert r.status_code == 200
        assert "data:" not in r.read().decode()
    assert time.monotonic() - started < 3


@one_mode
def test_a_stream_whose_events_expired_is_replayed_from_the_history(api):
    with api.stream("POST", "/execute/stream", json={"request": {"runtime": "bash", "code": "echo kept"}}) as r:
        execution_id = r.headers["X-Execution-Id"]
        r.read()
    get_events_redis().delete(f"isol8:events:execution-{execution_id}")  # as if EVENT_RETENTION passed
    with api.stream("GET", f"/executions/{execution_id}/events") as r:
        data = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert data[0]["type"] == "stdout" and data[0]["data"] == "kept\n"
    assert data[-1] == {"type": "exit", "data": "0", "phase": "code"}


@one_mode
def test_open_streams_are_capped_per_tenant(stack, api_key):
    from isol8_site.web import uvicorn_argv
    from tests.conftest import ROOT, free_port, wait_healthy

    port = free_port()
    web = subprocess.Popen(uvicorn_argv(port=port), cwd=ROOT, env={**stack.env, "ISOL8_TENANT_MAX_STREAMS": "2"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout=30)
        headers = {"Authorization": f"Bearer {api_key}"}
        body = {"request": {"runtime": "bash", "code": "sleep 4"}}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            with client.stream("POST", "/execute/stream", json=body) as first, \
                    client.stream("POST", "/execute/stream", json=body) as second:
                assert first.status_code == second.status_code == 200
                third = client.post("/execute/stream", json=body)
                assert third.status_code == 429 and "open streams" in third.json()["error"]
                first.read()
                second.read()
            with client.stream("POST", "/execute/stream", json={"request": {"runtime": "bash", "code": "true"}}) as r:
                assert r.status_code == 200  # the slots were given back
                r.read()
    finally:
        web.terminate()
        web.wait()


# ------------------------------------------------------------ 14. delete wins


def test_deleting_a_session_during_its_first_run_wins(api, tenant):
    result: dict[str, httpx.Response] = {}
    first = threading.Thread(target=lambda: result.update(
        r=run(api, {"runtime": "bash", "code": "sleep 2; echo late"}, sessionId="deleted-early")))
    first.start()
    deadline = time.monotonic() + 10
    while not Session.objects.filter(tenant=tenant, session_id="deleted-early").exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert api.delete("/session/deleted-early").json() == {"ok": True}
    first.join(60)
    assert result["r"].status_code == 200
    time.sleep(1)
    session = Session.objects.get(tenant=tenant, session_id="deleted-early")
    assert session.state == "stopped"
    assert not [c for c in containers.list_managed(host=settings.ISOL8_WORKER_HOST)
                if c.labels.get("isol8.session") == str(session.pk)]
