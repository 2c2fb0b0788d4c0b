"""procs.py, the parts safe on a host: the code user's ids, spawn as this process's user, /proc and cgroup reading.

kill_all and sweep are not run: with this process's uid (root) they would
signal every process of the host.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from isol8_launcher.procs import CodeUser, Process, _uid_and_state, cgroup_counter, cgroup_value
from isol8_launcher.protocol import OpError

from tests.unit.launcher.support import python


@pytest.fixture
def me() -> CodeUser:
    return CodeUser(os.getuid(), os.getgid())


def finish(proc: Process) -> tuple[bytes, bytes, int]:
    """The program's stdout, stderr and exit status, once it ended; closes its descriptors."""
    os.close(proc.stdin)
    out = b"".join(iter(lambda: os.read(proc.stdout, 65536), b""))
    err = b"".join(iter(lambda: os.read(proc.stderr, 65536), b""))
    _, status = os.waitpid(proc.pid, 0)
    for fd in (proc.stdout, proc.stderr, proc.pidfd):
        os.close(fd)
    return out, err, os.waitstatus_to_exitcode(status)


def test_uid_names_the_code_user_and_its_group():
    user = CodeUser.from_args(["--uid", "3000005"])
    assert (user.uid, user.gid) == (3_000_005, 3_000_005)
    assert not user.is_current()


def test_without_uid_the_code_user_is_this_process(me):
    user = CodeUser.from_args([])
    assert (user.uid, user.gid) == (os.getuid(), os.getgid()) and user.is_current()


def test_acting_as_the_current_user_changes_no_id(me):
    with me.acting():
        assert os.getresuid() == (os.getuid(),) * 3


def test_run_as_turns_failures_into_internal_op_errors_and_keeps_op_errors(me):
    def fail_with(exc: BaseException):
        def fn():
            raise exc

        return fn

    with pytest.raises(OpError) as os_error:
        me.run_as(fail_with(PermissionError(13, "Permission denied")))
    with pytest.raises(OpError) as other:
        me.run_as(fail_with(KeyError("k")))
    with pytest.raises(OpError) as kept:
        me.run_as(fail_with(OpError("not_found", "gone")))
    assert (os_error.value.code, os_error.value.message) == ("internal", "Permission denied")
    assert (other.value.code, other.value.message) == ("internal", "KeyError: 'k'")
    assert (kept.value.code, kept.value.message) == ("not_found", "gone")
    assert me.run_as(lambda: 42) == 42


def test_spawn_starts_the_program_in_its_own_session_with_its_cwd_env_and_pipes(me, tmp_path):
    code = "import os, sys; print(os.getsid(0) == os.getpid(), os.getcwd(), os.environ['X']); print(sys.stdin.read())"
    proc = me.spawn(python(code), {"X": "value"}, str(tmp_path), None)
    os.write(proc.stdin, b"fed")
    out, err, exit_code = finish(proc)
    assert out.decode().splitlines() == [f"True {tmp_path} value", "fed"]
    assert (err, exit_code) == (b"", 0)


def test_spawn_runs_prepare_in_the_child_before_the_program(me, tmp_path):
    marker = tmp_path / "prepared-by"
    proc = me.spawn(python("print(open('prepared-by').read())"), {}, str(tmp_path),
                    lambda: marker.write_text(str(os.getpid())))
    out, _, _ = finish(proc)
    assert out.decode().strip() == str(proc.pid)


def test_spawn_reports_a_missing_program_as_spawn_failed(me, tmp_path):
    with pytest.raises(OpError) as failed:
        me.spawn([str(tmp_path / "no-such-program")], {}, str(tmp_path), None)
    assert failed.value.code == "spawn_failed" and "no-such-program" in failed.value.message


def test_spawn_reports_a_missing_cwd_as_spawn_failed(me, tmp_path):
    with pytest.raises(OpError) as failed:
        me.spawn([sys.executable, "-c", "pass"], {}, str(tmp_path / "missing"), None)
    assert failed.value.code == "spawn_failed"


def test_spawn_reports_the_error_of_prepare_with_its_code(me, tmp_path):
    def prepare() -> None:
        raise OpError("sandbox_full", "no space left in /sandbox")

    with pytest.raises(OpError) as failed:
        me.spawn([sys.executable, "-c", "pass"], {}, str(tmp_path), prepare)
    assert (failed.value.code, failed.value.message) == ("sandbox_full", "no space left in /sandbox")


def test_the_code_users_processes_include_a_running_program_but_not_this_process(me, tmp_path):
    proc = me.spawn(python("import time; time.sleep(30)"), {}, str(tmp_path), None)
    try:
        found = dict(me.processes())
        assert found.get(proc.pid) in ("R", "S")
        assert os.getpid() not in found
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        finish(proc)


def test_the_uid_and_state_come_from_a_proc_status_text():
    status = Path("/proc/self/status").read_text()
    assert _uid_and_state(status) == (str(os.getuid()), "R")
    assert _uid_and_state("Name:\tx\nState:\tZ (zombie)\nUid:\t1000\t1000\t1000\t1000\n") == ("1000", "Z")


def test_a_cgroup_counter_is_read_from_the_first_file_that_exists(tmp_path):
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 2\noom 1\noom_kill 3\n")
    assert cgroup_counter(((str(tmp_path / "missing"), "oom_kill"), (str(events), "oom_kill"))) == 3
    assert cgroup_counter(((str(events), "absent"),)) == 0
    assert cgroup_counter(((str(tmp_path / "missing"), "oom_kill"),)) == 0


def test_a_cgroup_value_is_the_first_readable_number_scaled(tmp_path):
    broken, usage = tmp_path / "broken", tmp_path / "cpuacct.usage"
    broken.write_text("not a number\n")
    usage.write_text("1234\n")
    assert cgroup_value(((str(broken), 1), (str(usage), 1000))) == 1_234_000
