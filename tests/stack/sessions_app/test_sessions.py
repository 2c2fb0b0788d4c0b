"""Persistent sessions and file transfer through the real stack (issue 4)."""

from __future__ import annotations

import base64
import threading
import time

import pytest

from sandbox import containers
from sessions_app.models import Session
from tests.conftest import make_key, run

pytestmark = pytest.mark.stack


def in_session(api, session_id, request, options=None):
    return run(api, request, options, sessionId=session_id)


def put(api, session_id, path, content: bytes):
    return api.post("/file", json={"sessionId": session_id, "path": path,
                                   "content": base64.b64encode(content).decode()})


def get(api, session_id, path):
    return api.get("/file", params={"sessionId": session_id, "path": path})


def test_state_persists_across_calls(api):
    first = in_session(api, "s1", {"runtime": "python", "code": "open('/sandbox/state.txt', 'w').write('42')"})
    assert first.status_code == 200, first.text
    second = in_session(api, "s1", {"runtime": "python", "code": "print(open('/sandbox/state.txt').read())"})
    assert second.json()["stdout"] == "42"
    record = api.get(f"/executions/{second.json()['executionId']}").json()
    assert record["sessionId"] == "s1"


def test_binary_upload_download_round_trip(api):
    in_session(api, "files", {"runtime": "bash", "code": "true"})
    payload = bytes([0x00, 0x01, 0x02, 0xFF, 0x0A])
    assert put(api, "files", "/sandbox/bin.dat", payload).json() == {"ok": True}
    body = get(api, "files", "/sandbox/bin.dat").json()
    assert base64.b64decode(body["content"]) == payload
    assert put(api, "files", "nested/dir/x.txt", b"relative").status_code == 200
    assert base64.b64decode(get(api, "files", "/sandbox/nested/dir/x.txt").json()["content"]) == b"relative"


def test_code_reads_an_uploaded_csv(api):
    in_session(api, "csv", {"runtime": "python", "code": "pass"})
    put(api, "csv", "/sandbox/data.csv", b"a,b\n1,2\n3,4\n")
    code = "import csv\nrows = list(csv.DictReader(open('data.csv')))\nprint(sum(int(r['b']) for r in rows))"
    assert in_session(api, "csv", {"runtime": "python", "code": code}).json()["stdout"] == "6"


@pytest.mark.parametrize(
    "path", ["../../etc/passwd", "/etc/passwd", "/proc/self/environ", "/sandbox/../etc/shadow",
             "link-file", "link-dir/passwd", "/sandbox/link-dir/shadow", "relative-link/../../etc/passwd"],
)
def test_paths_leading_outside_are_refused(api, path):
    setup = "ln -sf /etc/shadow link-file; ln -sfn /etc link-dir; ln -sfn ../../ relative-link"
    in_session(api, "paths", {"runtime": "bash", "code": setup})
    response = get(api, "paths", path)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "path_outside_sandbox"
    assert "root" not in response.text
    upload = put(api, "paths", path, b"overwrite")
    assert upload.status_code == 400 and upload.json()["code"] == "path_outside_sandbox"


def test_symlink_inside_the_sandbox_is_followed(api):
    in_session(api, "inner", {"runtime": "bash", "code": "mkdir -p d; echo hi > d/f; ln -s d/f alias"})
    assert base64.b64decode(get(api, "inner", "alias").json()["content"]) == b"hi\n"


def test_missing_file_is_404_and_unknown_session_404(api):
    in_session(api, "miss", {"runtime": "bash", "code": "true"})
    response = get(api, "miss", "/sandbox/nope.txt")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert get(api, "never-created", "/sandbox/x").status_code == 404
    assert put(api, "never-created", "/sandbox/x", b"x").status_code == 404


def test_file_over_the_size_limit_is_413(api):
    in_session(api, "big", {"runtime": "bash", "code": "true"})
    assert put(api, "big", "/sandbox/big.bin", b"x" * (10 * 1024 * 1024 + 1)).status_code == 413


def test_full_sandbox_is_a_clear_error(api):
    options = {"memoryLimit": "256m", "sandboxSize": "2m", "tmpSize": "1m"}
    in_session(api, "full", {"runtime": "bash", "code": "true"}, options)
    response = put(api, "full", "/sandbox/fill.bin", b"x" * (3 * 1024 * 1024))
    assert response.status_code == 507
    assert response.json()["code"] == "sandbox_full"


def test_another_tenant_never_sees_my_session(api, stack):
    from tenants.services import tenant_create

    in_session(api, "user-123-session", {"runtime": "bash", "code": "echo mine > secret.txt"})
    other = tenant_create(slug="other-tenant-sess")
    with stack.client(make_key(other)) as them:
        assert them.get("/sessions").json()["sessions"] == []
        assert get(them, "user-123-session", "/sandbox/secret.txt").status_code == 404
        assert put(them, "user-123-session", "/sandbox/x", b"x").status_code == 404
        assert them.delete("/session/user-123-session").json() == {"ok": True}
        # The same id is their own, separate session.
        theirs = in_session(them, "user-123-session", {"runtime": "bash", "code": "cat secret.txt; echo rc=$?"})
        assert "mine" not in theirs.json()["stdout"]
    assert in_session(api, "user-123-session", {"runtime": "bash", "code": "cat secret.txt"}).json()["stdout"] == "mine"


def test_list_shows_own_sessions_with_isol8_fields(api):
    in_session(api, "listed", {"runtime": "python", "code": "pass"})
    sessions = api.get("/sessions").json()["sessions"]
    listed = next(s for s in sessions if s["id"] == "listed")
    assert listed["isActive"] is False
    assert listed["runtime"] == "python"
    assert listed["lastAccessedAt"].endswith("Z") and listed["createdAt"].endswith("Z")


def test_second_execution_while_one_runs_is_409(api):
    in_session(api, "busy", {"runtime": "bash", "code": "true"})
    thread = threading.Thread(target=in_session, args=(api, "busy", {"runtime": "bash", "code": "sleep 3"}))
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(s["isActive"] for s in api.get("/sessions").json()["sessions"] if s["id"] == "busy"):
            break
        time.sleep(0.05)
    response = in_session(api, "busy", {"runtime": "bash", "code": "echo second"})
    thread.join()
    assert response.status_code == 409
    assert response.json()["code"] == "session_busy"
    later = in_session(api, "busy", {"runtime": "bash", "code": "echo later"}).json()
    assert later["stdout"] == "later", later


def test_runtime_switch_is_400(api):
    in_session(api, "switch", {"runtime": "python", "code": "pass"})
    response = in_session(api, "switch", {"runtime": "bash", "code": "echo"})
    assert response.status_code == 400
    assert "Cannot switch runtime" in response.json()["error"]


def test_bad_session_id_is_400(api):
    response = in_session(api, "bad id!", {"runtime": "bash", "code": "true"})
    assert response.status_code == 400
    assert "sessionId" in response.json()["error"]


def test_timeout_in_a_session_keeps_it_usable(api):
    in_session(api, "tmo", {"runtime": "bash", "code": "echo keep > k.txt"})
    body = in_session(api, "tmo", {"runtime": "bash", "code": "sleep 30", "timeoutMs": 500}).json()
    assert body["status"] == "timeout"
    assert in_session(api, "tmo", {"runtime": "bash", "code": "cat k.txt"}).json()["stdout"] == "keep"


def test_delete_removes_the_container(api, tenant):
    in_session(api, "gone", {"runtime": "bash", "code": "true"})
    container_id = Session.objects.get(tenant=tenant, session_id="gone").container_id
    assert containers.container_running(container_id)
    assert api.delete("/session/gone").json() == {"ok": True}
    deadline = time.monotonic() + 15
    while containers.container_running(container_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not containers.container_running(container_id)
    assert all(s["id"] != "gone" for s in api.get("/sessions").json()["sessions"])
    assert api.delete("/session/never-existed").json() == {"ok": True}


def test_session_quota_is_429(api, tenant):
    tenant.max_sessions = 1
    tenant.save()
    assert in_session(api, "q1", {"runtime": "bash", "code": "true"}).status_code == 200
    response = in_session(api, "q2", {"runtime": "bash", "code": "true"})
    assert response.status_code == 429
    assert response.json()["code"] == "quota_exceeded" and "sessions" in response.json()["error"]
    assert "Retry-After" in response.headers


def test_concurrent_new_sessions_never_exceed_the_tenant_cap(stack, tenant):
    """Eight requests at once for eight new sessions, room for three: exactly three get one (count-then-insert race)."""
    tenant.max_sessions = 3
    tenant.max_concurrent = None
    tenant.save()
    key = make_key(tenant)
    barrier = threading.Barrier(8)
    answers: list[int] = []

    def create(n: int) -> None:
        with stack.client(key) as client:
            barrier.wait()
            answers.append(in_session(client, f"race-{n}", {"runtime": "bash", "code": "true"}).status_code)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(answers) == [200] * 3 + [429] * 5, answers
    assert Session.objects.live().filter(tenant=tenant).count() == 3
    with stack.client(key) as client:
        for session in client.get("/sessions").json()["sessions"]:
            client.delete(f"/session/{session['id']}")
