"""run.py: a run's loop with real programs (as this process's user), frames read back from a pipe.

The outcome keys asserted are the ones the worker reads (sandbox/run.py,
_result_from_outcome): exitCode, timedOut, cancelled, durationMs,
stdoutBytes, stderrBytes, phase, files, oom, pidsExhausted, and forkServer.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import threading
import time
from types import SimpleNamespace
from typing import Any

import isol8_launcher.run as run_module
import pytest
from isol8_launcher.protocol import OpError
from isol8_launcher.run import BASE_ENV, COALESCE_BYTES, OutputPump, Runner

from sandbox.protocol import encode_request
from tests.unit.launcher.support import FramePipe, Programs, end_of_run, kinds, parse_frames, payloads, python

SLEEPER = "import time; time.sleep(30)"


class CodeUserCalls:
    """``as_code_user`` for the Runner: runs the function here, counting the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fn: Any) -> Any:
        self.calls += 1
        return fn()


@pytest.fixture
def as_code_user() -> CodeUserCalls:
    return CodeUserCalls()


@pytest.fixture
def runner(frames: FramePipe, control, programs: Programs, roots, as_code_user) -> Runner:
    return Runner(
        writer=frames.writer,
        control_fd=control[0],
        pending=[],
        spawn=programs.spawn,
        kill=programs.kill,
        as_code_user=as_code_user,
        roots=roots,
    )


def request(code: str, **fields: Any) -> dict[str, Any]:
    return {"op": "run", "argv": python(code), "timeoutMs": 10000, **fields}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(runner: Runner, frames: FramePipe, code: str, **fields: Any) -> tuple[dict[str, Any], list]:
    """Serve one run request; its outcome (the x frame) and all its frames."""
    runner.run_request(request(code, **fields))
    got = frames.frames()
    return end_of_run(got), got


def send_later(fd: int, req: dict[str, Any], seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, lambda: os.write(fd, encode_request(req)))
    timer.start()
    return timer


# ------------------------------------------------------------------ output and outcome


def test_stdout_and_stderr_arrive_as_o_and_e_frames(runner, frames):
    outcome, got = run(runner, frames, "import sys; print('to out'); print('to err', file=sys.stderr)")
    assert payloads(got, "o") == b"to out\n"
    assert payloads(got, "e") == b"to err\n"
    assert (outcome["stdoutBytes"], outcome["stderrBytes"]) == (7, 7)


def test_the_outcome_has_the_exit_code_and_the_keys_the_worker_reads(runner, frames):
    outcome, _ = run(runner, frames, "import sys; sys.exit(3)")
    assert outcome["exitCode"] == 3
    assert outcome["timedOut"] is False and outcome["cancelled"] is False and outcome["killed"] is False
    assert outcome["phase"] == "code" and outcome["forkServer"] is False
    assert isinstance(outcome["oom"], bool) and isinstance(outcome["pidsExhausted"], bool)
    assert isinstance(outcome["durationMs"], int) and outcome["durationMs"] >= 0
    assert "error" not in outcome and "files" not in outcome


@pytest.mark.parametrize(("sig", "exit_code", "killed"), [(signal.SIGTERM, 143, False), (signal.SIGKILL, 137, True)])
def test_a_program_ended_by_a_signal_exits_with_128_plus_the_signal(runner, frames, sig, exit_code, killed):
    outcome, _ = run(runner, frames, f"import os; os.kill(os.getpid(), {int(sig)})")
    assert (outcome["exitCode"], outcome["killed"]) == (exit_code, killed)


def test_frames_keep_the_order_in_which_the_program_wrote_its_streams(runner, frames):
    code = (
        "import sys, time\n"
        "for stream, text in ((sys.stdout, 'one'), (sys.stderr, 'two'), (sys.stdout, 'three')):\n"
        "    stream.write(text); stream.flush(); time.sleep(0.1)\n"
    )
    _, got = run(runner, frames, code)
    assert [(f.kind, f.payload) for f in got if f.kind in "oe"] == [("o", b"one"), ("e", b"two"), ("o", b"three")]


def test_output_past_max_output_is_counted_but_not_forwarded(runner, frames):
    code = (
        "import sys\n"
        "for chunk in ('a' * 100, 'b' * 50):\n"
        "    sys.stdout.write(chunk); sys.stdout.flush()\n"
        "sys.stderr.write('e' * 5)\n"
    )
    outcome, got = run(runner, frames, code, maxOutput=10)
    assert payloads(got, "o") == b"a" * 10
    assert payloads(got, "e") == b"e" * 5
    (marker,) = [f for f in got if f.kind == "t"]
    assert marker.json()["kind"] == "o" and marker.json()["bytes"] > 10
    assert kinds(got).index("t") > max(i for i, f in enumerate(got) if f.kind == "o")
    assert (outcome["stdoutBytes"], outcome["stderrBytes"]) == (150, 5)


def test_stdin_is_fed_to_the_program_whole(runner, frames):
    data = os.urandom(300 * 1024)  # more than a pipe holds: fed as the program reads
    code = "import hashlib, sys; data = sys.stdin.buffer.read(); print(len(data), hashlib.sha256(data).hexdigest())"
    outcome, got = run(runner, frames, code, stdin=b64(data))
    assert payloads(got, "o").decode().split() == [str(len(data)), hashlib.sha256(data).hexdigest()]
    assert outcome["exitCode"] == 0


def test_without_stdin_the_program_reads_eof(runner, frames):
    _, got = run(runner, frames, "import sys; print(len(sys.stdin.buffer.read()))")
    assert payloads(got, "o") == b"0\n"


def test_a_program_that_never_reads_its_stdin_still_ends_the_run(runner, frames):
    outcome, _ = run(runner, frames, "import os; os.close(0)", stdin=b64(b"x" * (1024 * 1024)))
    assert outcome["exitCode"] == 0


# ------------------------------------------------------------------ deadline, cancel, control messages


def test_a_program_past_its_deadline_is_killed_and_reported_as_timed_out(runner, frames, programs):
    outcome, _ = run(runner, frames, SLEEPER, timeoutMs=200)
    assert outcome["timedOut"] is True and outcome["cancelled"] is False
    assert outcome["exitCode"] == 137 and outcome["killed"] is True
    assert programs.kills >= 1
    assert 200 <= outcome["durationMs"] < 5000


def test_output_files_are_not_collected_after_a_timeout(runner, frames, roots, as_code_user):
    code = f"open({roots[0]!r} + '/out.txt', 'w').write('x'); import time; time.sleep(30)"
    outcome, _ = run(runner, frames, code, timeoutMs=200, outputPaths=[f"{roots[0]}/out.txt"])
    assert outcome["timedOut"] is True
    assert "files" not in outcome and as_code_user.calls == 0


def test_a_cancel_arriving_during_the_run_kills_the_program(runner, frames, control, programs):
    timer = send_later(control[1], {"op": "cancel"}, 0.2)
    started = time.monotonic()
    try:
        outcome, _ = run(runner, frames, SLEEPER)
    finally:
        timer.cancel()
    assert outcome["cancelled"] is True and outcome["timedOut"] is False
    assert outcome["exitCode"] == 137
    assert programs.kills >= 1
    assert time.monotonic() - started < 5


def test_a_request_sent_ahead_during_the_run_is_kept_for_after_it(runner, frames, control):
    os.write(control[1], encode_request({"op": "ping", "nonce": "next"}))
    outcome, _ = run(runner, frames, "import time; time.sleep(0.1)")
    assert outcome["cancelled"] is False and outcome["exitCode"] == 0
    assert runner.pending == [{"op": "ping", "nonce": "next"}]


def test_the_worker_closing_its_side_does_not_end_the_run(runner, frames, control):
    os.close(control[1])
    outcome, got = run(runner, frames, "import time; time.sleep(0.1); print('done')")
    assert outcome["exitCode"] == 0 and outcome["cancelled"] is False
    assert payloads(got, "o") == b"done\n"


# ------------------------------------------------------------------ files, cwd, env


def test_the_runs_files_are_written_before_the_program_starts(runner, frames, roots):
    files = [[f"{roots[0]}/main.txt", b64(b"in sandbox")], [f"{roots[1]}/data.txt", b64(b"in tmp")]]
    code = f"print(open('main.txt').read(), open({roots[1]!r} + '/data.txt').read())"
    _, got = run(runner, frames, code, files=files)
    assert payloads(got, "o") == b"in sandbox in tmp\n"


def test_a_file_outside_the_roots_fails_the_run_with_its_error_code(runner, frames, programs, tmp_path):
    outcome, _ = run(runner, frames, "print('never')", files=[[str(tmp_path / "elsewhere.txt"), b64(b"x")]])
    assert outcome["code"] == "path_outside_sandbox" and outcome["error"]
    assert programs.started == []
    assert not (tmp_path / "elsewhere.txt").exists()


def test_a_program_that_cannot_start_fails_the_run_with_the_spawn_error(frames, control, roots):
    def spawn(argv, env, cwd, prepare):
        raise OpError("spawn_failed", f"{argv[0]}: No such file or directory")

    runner = Runner(writer=frames.writer, control_fd=control[0], pending=[], spawn=spawn, kill=lambda: True,
                    as_code_user=lambda fn: fn(), roots=roots)
    runner.run_request(request("pass"))
    assert end_of_run(frames.frames()) == {"error": f"{python('')[0]}: No such file or directory",
                                           "code": "spawn_failed"}


def test_the_program_runs_in_the_first_root_by_default(runner, frames, roots):
    _, got = run(runner, frames, "import os; print(os.getcwd())")
    assert payloads(got, "o").decode().strip() == roots[0]


def test_a_missing_cwd_is_created(runner, frames, roots):
    cwd = f"{roots[0]}/work/dir"
    _, got = run(runner, frames, "import os; print(os.getcwd())", cwd=cwd)
    assert payloads(got, "o").decode().strip() == cwd


def test_the_request_env_is_added_to_the_base_env(runner, frames, programs):
    code = "import os; print(os.environ['GREETING'], os.environ['HOME'], os.environ['LANG'])"
    _, got = run(runner, frames, code, env={"GREETING": "hi", "HOME": "/elsewhere"})
    assert payloads(got, "o") == f"hi /elsewhere {BASE_ENV['LANG']}\n".encode()
    ((_, env, _),) = programs.started
    assert env["PATH"] == BASE_ENV["PATH"] and env["TMPDIR"] == BASE_ENV["TMPDIR"]


def test_output_paths_are_read_as_the_code_user_after_the_run(runner, frames, roots, as_code_user):
    out = f"{roots[0]}/out.txt"
    outcome, _ = run(runner, frames, f"open({out!r}, 'w').write('result')", outputPaths=[out, f"{roots[0]}/none"])
    assert outcome["files"] == {out: b64(b"result")}
    assert as_code_user.calls == 1


# ------------------------------------------------------------------ the setup script


def test_the_setup_script_runs_first_and_its_output_has_its_own_kinds(runner, frames, programs, roots):
    outcome, got = run(runner, frames, "print('program')", setup=python("print('setting up')"),
                       setupEnv={"SETUP": "1"})
    assert payloads(got, "O") == b"setting up\n" and payloads(got, "o") == b"program\n"
    assert kinds(got).index("O") < kinds(got).index("o")
    assert outcome["phase"] == "code" and outcome["exitCode"] == 0
    (_, setup_env, setup_cwd), (_, code_env, _) = programs.started
    assert setup_env["SETUP"] == "1" and "SETUP" not in code_env and setup_cwd == roots[0]


def test_a_failing_setup_script_ends_the_run_before_the_program(runner, frames, programs):
    outcome, got = run(runner, frames, "print('program')", setup=python("import sys; sys.exit(4)"))
    assert outcome["phase"] == "setup" and outcome["exitCode"] == 4
    assert len(programs.started) == 1 and payloads(got, "o") == b""


def test_the_setup_script_and_the_program_share_one_deadline(runner, frames):
    outcome, _ = run(runner, frames, SLEEPER, setup=python("import time; time.sleep(0.1)"), timeoutMs=500)
    assert outcome["timedOut"] is True and outcome["phase"] == "code"
    assert outcome["durationMs"] < 500


# ------------------------------------------------------------------ what programs leave behind

BACKGROUND = "import subprocess; subprocess.Popen(['/bin/sleep', '30']); print('parent done', flush=True)"


def test_in_a_one_shot_sandbox_processes_left_behind_are_killed_when_the_program_ends(runner, frames, programs):
    started = time.monotonic()
    outcome, got = run(runner, frames, BACKGROUND, killLeftovers=True)
    assert outcome["exitCode"] == 0 and payloads(got, "o") == b"parent done\n"
    assert programs.kills >= 1
    assert time.monotonic() - started < 1.9  # not the 2 s the drain would wait for pipes held open


def test_in_a_session_processes_left_behind_live_on(runner, frames, programs):
    started = time.monotonic()
    outcome, _ = run(runner, frames, BACKGROUND, killLeftovers=False)
    assert outcome["exitCode"] == 0
    assert programs.kills == 0
    assert time.monotonic() - started < 1.9
    os.killpg(programs.groups[0], 0)  # the sleep still runs in the program's process group


# ------------------------------------------------------------------ the output pump


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(run_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


@pytest.fixture
def pump_frames() -> Any:
    pipe = FramePipe()
    yield pipe
    pipe.close()


def test_chunks_coming_faster_than_the_coalescing_delay_are_merged(clock, pump_frames):
    pump = OutputPump(pump_frames.writer, (b"o", b"e"), max_output=1000)
    pump.feed(0, b"a")  # the stream was quiet: forwarded at once
    clock.now += 0.001
    pump.feed(0, b"b")
    clock.now += 0.001
    pump.feed(0, b"c")
    assert pump.wait_hint() == pytest.approx(0.002)
    pump.flush()
    assert [(f.kind, f.payload) for f in pump_frames.frames()] == [("o", b"a"), ("o", b"bc")]


def test_a_chunk_of_the_other_stream_first_forwards_what_is_held_back(clock, pump_frames):
    pump = OutputPump(pump_frames.writer, (b"o", b"e"), max_output=1000)
    pump.feed(0, b"a")
    clock.now += 0.001
    pump.feed(0, b"b")
    clock.now += 0.001
    pump.feed(1, b"x")
    pump.flush()
    assert [(f.kind, f.payload) for f in pump_frames.frames()] == [("o", b"a"), ("o", b"b"), ("e", b"x")]


def test_held_back_output_of_coalesce_bytes_is_forwarded_at_once(clock, pump_frames):
    pump = OutputPump(pump_frames.writer, (b"o", b"e"), max_output=10 * COALESCE_BYTES)
    pump.feed(0, b"a")
    clock.now += 0.001
    pump.feed(0, b"b" * COALESCE_BYTES)
    assert pump.wait_hint() is None
    assert [len(f.payload) for f in pump_frames.frames()] == [1, COALESCE_BYTES]


def test_the_truncation_marker_is_sent_once_right_after_the_last_bytes(clock, pump_frames):
    pump = OutputPump(pump_frames.writer, (b"O", b"E"), max_output=5)
    for chunk in (b"abc", b"defg", b"hij"):
        clock.now += 1
        pump.feed(0, chunk)
    got = pump_frames.frames()
    assert [(f.kind, f.payload) for f in got[:-1]] == [("O", b"abc"), ("O", b"de")]
    assert got[-1].kind == "t" and got[-1].json() == {"kind": "O", "bytes": 7}
    assert pump.totals == [10, 0]


def test_parse_frames_refuses_a_cut_frame():
    """The helper the tests read frames with fails on bytes that end inside a frame."""
    with pytest.raises(AssertionError):
        parse_frames(b"\x00\x00\x00\x05ohel")
