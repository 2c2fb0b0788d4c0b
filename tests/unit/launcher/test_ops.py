"""ops.py: the Launcher's replies, with its roots in tmp_path and a code user that can only kill the tests' programs.

The real CodeUser.kill_all would SIGKILL every process of its uid (here
root: the whole host), and a reset's wipe removes the host's System V IPC
objects; the user below never does the first, and the one reset test that
wipes replaces the second.
"""

from __future__ import annotations

import base64
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import isol8_launcher.ops as ops_module
import pytest
from isol8_launcher.ops import Launcher
from isol8_launcher.procs import CodeUser

from sandbox.protocol import encode_request
from tests.unit.launcher.support import Frame, FramePipe, Programs, kinds, python


class HostSafeCodeUser(CodeUser):
    """This process's own user (as in once mode), whose kill_all kills only the test's programs."""

    def __init__(self, programs: Programs, *, clean: bool = True) -> None:
        super().__init__(os.getuid(), os.getgid())
        self.programs = programs
        self.clean = clean
        self.kill_alls = 0

    def kill_all(self) -> bool:
        self.kill_alls += 1
        self.programs.kill_groups()
        return self.clean

    def sweep(self) -> bool:
        raise AssertionError("kill(-1) as root would reach every process of the host")


@pytest.fixture
def user(programs: Programs) -> HostSafeCodeUser:
    return HostSafeCodeUser(programs)


@pytest.fixture
def launcher(user, frames: FramePipe, control, programs: Programs, roots) -> Launcher:
    return Launcher(user, writer=frames.writer, requests_fd=control[0], spawn=programs.spawn, sandbox=roots[0],
                    run_roots=roots, scratch_dirs=roots)


def reply(launcher: Launcher, frames: FramePipe, req: dict[str, Any]) -> dict[str, Any]:
    """The ``r`` frame ``req`` is answered with (the only frame)."""
    launcher.handle(req)
    (frame,) = frames.frames()
    assert frame.kind == "r"
    return frame.json()


def replies(launcher: Launcher, frames: FramePipe, *reqs: dict[str, Any]) -> list[Frame]:
    for req in reqs:
        launcher.handle(req)
    return frames.frames()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_an_unknown_op_is_a_bad_request(launcher, frames):
    answer = reply(launcher, frames, {"op": "format_disk"})
    assert answer["ok"] is False and answer["code"] == "bad_request" and "format_disk" in answer["error"]


def test_a_request_without_an_op_is_a_bad_request(launcher, frames):
    assert reply(launcher, frames, {"path": "x"})["code"] == "bad_request"


def test_ping_answers_with_its_nonce(launcher, frames):
    assert reply(launcher, frames, {"op": "ping", "nonce": "n-42"}) == {"pong": "n-42", "ok": True}


def test_a_cancel_after_its_run_is_acknowledged_with_a_c_frame(launcher, frames, user):
    (frame,) = replies(launcher, frames, {"op": "cancel"})
    assert frame.kind == "c" and frame.json() == {"late": True}
    assert user.kill_alls == 0


def test_the_fork_server_is_refused_when_the_launcher_is_the_code_user(launcher, frames):
    answer = reply(launcher, frames, {"op": "forkserver", "argv": ["python3"], "env": {}})
    assert answer["ok"] is False and answer["code"] == "bad_request"
    assert launcher.forkserver_config is None


def test_stats_report_the_cpu_time_as_nanoseconds(launcher, frames):
    answer = reply(launcher, frames, {"op": "stats"})
    assert answer["ok"] is True and isinstance(answer["cpuNs"], int) and answer["cpuNs"] >= 0


# ------------------------------------------------------------------ the file API


def test_a_file_put_is_got_back(launcher, frames, roots):
    launcher.handle({"op": "put_file", "path": "dir/f.bin", "content": b64(b"\x00\x01data")})
    launcher.handle({"op": "get_file", "path": f"{roots[0]}/dir/f.bin"})
    put, got = frames.frames()
    assert put.json() == {"ok": True}
    assert got.json() == {"content": b64(b"\x00\x01data"), "ok": True}
    assert Path(roots[0], "dir", "f.bin").read_bytes() == b"\x00\x01data"


def test_the_file_api_only_reaches_the_sandbox_root(launcher, frames, roots):
    Path(roots[1], "in-tmp.txt").write_bytes(b"x")
    answer = reply(launcher, frames, {"op": "get_file", "path": f"{roots[1]}/in-tmp.txt"})
    assert answer["ok"] is False and answer["code"] == "path_outside_sandbox"


def test_getting_a_missing_file_is_not_found(launcher, frames):
    assert reply(launcher, frames, {"op": "get_file", "path": "none.txt"})["code"] == "not_found"


def test_getting_a_file_past_max_bytes_is_refused(launcher, frames, roots):
    Path(roots[0], "big.txt").write_bytes(b"x" * 100)
    answer = reply(launcher, frames, {"op": "get_file", "path": "big.txt", "maxBytes": 99})
    assert answer["ok"] is False and answer["code"] == "payload_too_large"


def test_putting_a_file_through_a_symlink_leading_out_is_refused(launcher, frames, roots, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep")
    Path(roots[0], "link").symlink_to(outside)
    answer = reply(launcher, frames, {"op": "put_file", "path": "link", "content": b64(b"overwritten")})
    assert answer["ok"] is False and answer["code"] == "path_outside_sandbox"
    assert outside.read_bytes() == b"keep"


def test_packages_got_as_a_tarball_are_put_back(launcher, frames, roots):
    Path(roots[0], ".local", "lib").mkdir(parents=True)
    Path(roots[0], ".local", "lib", "mod.py").write_bytes(b"X = 1\n")
    packed = launcher.op_get_tar({"paths": [".local"]})
    Path(roots[0], ".local", "lib", "mod.py").unlink()
    assert reply(launcher, frames, {"op": "put_tar", "content": packed["content"]}) == {"ok": True}
    assert Path(roots[0], ".local", "lib", "mod.py").read_bytes() == b"X = 1\n"


def test_a_tarball_whose_symlink_leads_out_is_refused_and_writes_nothing_outside(launcher, frames, roots, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        door = tarfile.TarInfo("door")
        door.type, door.linkname = tarfile.SYMTYPE, str(outside)
        tar.addfile(door)
        planted = tarfile.TarInfo("door/planted.txt")
        planted.size = 1
        tar.addfile(planted, io.BytesIO(b"x"))
    answer = reply(launcher, frames, {"op": "put_tar", "content": b64(buffer.getvalue())})
    assert answer["ok"] is False
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------ kill and reset


def test_kill_reports_whether_the_code_users_processes_are_gone(launcher, frames, user):
    user.clean = False
    assert reply(launcher, frames, {"op": "kill"}) == {"clean": False, "ok": True}
    assert user.kill_alls == 1


def test_a_reset_whose_kill_left_processes_wipes_nothing(launcher, frames, user, roots):
    user.clean = False
    Path(roots[0], "left.txt").write_bytes(b"x")
    assert reply(launcher, frames, {"op": "reset"}) == {"clean": False, "ok": True}
    assert Path(roots[0], "left.txt").exists()


def test_a_reset_empties_the_scratch_dirs_of_the_code_users_files(launcher, frames, roots, monkeypatch) -> None:
    ipc_removals: list[bool] = []
    monkeypatch.setattr(ops_module, "remove_sysv_ipc", lambda: ipc_removals.append(True))
    Path(roots[0], "dir").mkdir()
    Path(roots[0], "dir", "f.txt").write_bytes(b"x")
    Path(roots[1], "mine.txt").write_bytes(b"x")
    Path(roots[1], "theirs.txt").write_bytes(b"x")
    os.chown(Path(roots[1], "theirs.txt"), 12345, 12345)
    assert reply(launcher, frames, {"op": "reset"}) == {"clean": True, "ok": True}
    assert os.listdir(roots[0]) == [] and os.listdir(roots[1]) == ["theirs.txt"]
    assert ipc_removals == [True]


# ------------------------------------------------------------------ runs


def test_a_run_is_answered_with_its_x_frame(launcher, frames, roots):
    got = replies(launcher, frames, {"op": "run", "argv": python("print('hi')"), "timeoutMs": 10000})
    assert kinds(got) == ["o", "x"] and got[0].payload == b"hi\n"
    assert got[1].json()["exitCode"] == 0


def test_a_run_with_reset_after_is_followed_by_the_resets_reply(launcher, frames, user):
    user.clean = False  # the reset's kill "fails": nothing is wiped
    got = replies(launcher, frames, {"op": "run", "argv": python("pass"), "timeoutMs": 10000, "resetAfter": True})
    assert kinds(got) == ["x", "r"]
    assert got[1].json() == {"clean": False, "ok": True}


def test_a_request_sent_during_a_run_is_served_after_it_in_order(launcher, frames, control):
    os.write(control[1], encode_request({"op": "ping", "nonce": "after"}))
    launcher.handle({"op": "run", "argv": python("import time; time.sleep(0.1)"), "timeoutMs": 10000})
    held = launcher.next_request()
    assert held == {"op": "ping", "nonce": "after"}
    launcher.handle(held)
    got = frames.frames()
    assert kinds(got) == ["x", "r"] and got[1].json() == {"pong": "after", "ok": True}


def test_next_request_reads_the_requests_fd_until_eof(launcher, control):
    os.write(control[1], encode_request({"op": "ping", "nonce": "1"}))
    os.close(control[1])
    assert launcher.next_request() == {"op": "ping", "nonce": "1"}
    assert launcher.next_request() is None
