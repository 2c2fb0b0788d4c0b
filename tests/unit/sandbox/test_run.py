"""Running a request in a sandbox, without Docker: the launcher request, output collection, outcomes."""

from __future__ import annotations

import base64
import json

import pytest

from sandbox.errors import SandboxError
from sandbox.protocol import Frame
from sandbox.run import OutputCollector, RunHandle, build_request, resolve_workdir, run_in_sandbox
from sandbox.spec import ExecutionSpec, Limits
from tests.unit.sandbox.conftest import LIMITS, fake_box


def spec(**fields: object) -> ExecutionSpec:
    return ExecutionSpec.from_request({"runtime": "python", "code": "print(1)", **fields}, {})


def files_of(request: dict) -> dict[str, str]:
    return {path: base64.b64decode(content).decode() for path, content in request["files"]}


def test_code_is_written_to_main_and_run_with_the_runtime(engine):
    request = build_request(spec(), LIMITS, in_session=False)
    assert request["argv"] == ["python3", "/sandbox/main.py"]
    assert files_of(request) == {"/sandbox/main.py": "print(1)"}
    assert (request["timeoutMs"], request["maxOutput"], request["killLeftovers"]) == (5000, 1024, True)
    assert request["maxFileBytes"] == engine.file_max_bytes


def test_a_session_run_gets_a_file_of_its_own_and_keeps_its_background_processes(engine):
    request = build_request(spec(), LIMITS, in_session=True)
    (path,) = files_of(request)
    assert path.startswith("/sandbox/exec_") and path.endswith(".py") and request["killLeftovers"] is False


def test_cmd_runs_in_bash_and_never_uses_the_fork_server(engine):
    request = build_request(spec(cmd="ls -la"), LIMITS, in_session=False, fork_server=True)
    assert request["argv"] == ["bash", "-c", "ls -la"] and request["forkServer"] is False
    assert build_request(spec(), LIMITS, in_session=False, fork_server=True)["forkServer"] is True


def test_relative_files_and_output_paths_land_under_sandbox(engine):
    request = build_request(spec(files={"data/a.txt": "x"}, outputPaths=["out.txt", "/tmp/o"]), LIMITS,
                            in_session=False)
    assert "/sandbox/data/a.txt" in files_of(request)
    assert request["outputPaths"] == ["/sandbox/out.txt", "/tmp/o"]


def test_secrets_and_env_reach_the_program_env_and_the_user_env_wins(engine):
    request = build_request(
        ExecutionSpec.from_request({"runtime": "python", "code": "1", "env": {"A": "mine"}}, {"secrets": {"A": "s"}}),
        LIMITS, in_session=False,
    )
    assert request["env"]["A"] == "mine" and request["env"]["HOME"] == "/sandbox"


def test_a_setup_script_runs_first_from_its_own_file(engine):
    request = build_request(spec(setupScript="pip list"), LIMITS, in_session=False)
    assert request["setup"] == ["bash", "/sandbox/.isol8-setup.sh"]
    assert request["files"][0][0] == "/sandbox/.isol8-setup.sh"


@pytest.mark.parametrize(("workdir", "resolved"), [("", "/sandbox"), ("a/b", "/sandbox/a/b"),
                                                    ("/sandbox/x", "/sandbox/x"), ("a/../b", "/sandbox/b")])
def test_workdir_resolves_inside_sandbox(workdir, resolved):
    assert resolve_workdir(workdir) == resolved


@pytest.mark.parametrize("workdir", ["..", "/etc", "a/../../etc", "/sandboxx"])
def test_workdir_outside_sandbox_is_refused(workdir):
    with pytest.raises(ValueError, match="inside /sandbox"):
        resolve_workdir(workdir)


def test_collector_masks_secrets_split_across_chunks_and_keeps_a_bounded_history():
    published: list[tuple[str, str, str | None]] = []
    collector = OutputCollector(secrets=["hunter2"], history_max=10, publish=lambda *e: published.append(e))
    collector.feed("o", b"pass: hun")
    collector.feed("o", b"ter2 ok and more text")
    collector.finish()
    streamed = "".join(text for name, text, _ in published if name == "stdout")
    assert streamed == "pass: *** ok and more text" and "hunter2" not in streamed
    assert collector.text("o") == "pass: *** "  # the first 10 characters


def test_collector_decodes_utf8_split_across_frames():
    collector = OutputCollector(secrets=[], history_max=100, publish=None)
    data = "é€".encode()
    for i in range(len(data)):
        collector.feed("e", data[i : i + 1])
    collector.finish()
    assert collector.text("e") == "é€"


def test_truncation_publishes_the_marker_once_after_what_was_held_back():
    published: list[tuple[str, str, str | None]] = []
    collector = OutputCollector(secrets=["abc"], history_max=100, publish=lambda *e: published.append(e))
    collector.feed("o", b"xx ab")
    collector.truncated("o", 5000, 1024)
    assert "".join(t for _, t, _ in published).endswith("xx ab\n\n--- OUTPUT TRUNCATED (5000 bytes, limit: 1024) ---")


def outcome(**fields: object) -> Frame:
    return Frame("x", json.dumps({"exitCode": 0, "durationMs": 7, **fields}).encode())


def run(frames: list[Frame], *, limits: Limits = LIMITS, handle: RunHandle | None = None, **kwargs: object):
    box = fake_box(script=[frames])
    result = run_in_sandbox(box, spec(), limits, in_session=False, history_max=100, publish=None,
                            handle=handle or RunHandle("e1"), **kwargs)
    return box, result


def test_a_run_collects_stdout_stderr_and_its_exit_code(engine):
    box, result = run([Frame("o", b"hi\n"), Frame("e", b"warn\n"), outcome(exitCode=3, stdoutBytes=3)])
    assert (result.status, result.exit_code, result.stdout, result.stderr) == ("ok", 3, "hi\n", "warn\n")
    assert (result.duration_ms, result.container_id, box.broken) == (7, "c1", False)
    assert box.transport.sent[0]["op"] == "run"
    assert box.reset_pending is True  # the launcher resets one-shot sandboxes by itself


@pytest.mark.parametrize(("fields", "status"), [
    ({"timedOut": True, "exitCode": 137}, "timeout"),
    ({"oom": True, "exitCode": 137}, "oom"),
    ({"pidsExhausted": True, "exitCode": 1}, "ok"),
])
def test_timeouts_oom_and_pids_exhaustion_never_reuse_the_sandbox(engine, fields, status):
    box, result = run([outcome(**fields)])
    assert result.status == status and box.broken


def test_output_past_max_output_is_marked_truncated(engine):
    _, result = run([Frame("o", b"x" * 10), outcome(stdoutBytes=5000)])
    assert result.stdout_truncated and result.stdout_total == 5000 and not result.stderr_truncated


def test_a_failed_setup_script_reports_the_setup_output(engine):
    _, result = run([Frame("O", b"setting up\n"), Frame("E", b"boom\n"), outcome(exitCode=2, phase="setup")])
    assert result.setup_failed and (result.stdout, result.stderr) == ("setting up\n", "boom\n")


def test_a_launcher_refusal_is_an_error_result(engine):
    _, result = run([Frame("x", b'{"error": "No space left", "code": "sandbox_full"}')])
    assert (result.status, result.error_code) == ("error", "sandbox_full")


def test_a_broken_stream_is_an_error_and_the_sandbox_is_not_reused(engine):
    box, result = run([Frame("o", b"partial"), SandboxError("lost the connection to the sandbox")])
    assert result.status == "error" and "lost the connection" in result.error and result.stdout == "partial"
    assert box.broken


def test_a_cancelled_run_reports_cancelled_with_137(engine):
    handle = RunHandle("e1")
    handle.cancel()
    _, result = run([outcome()], handle=handle)
    assert (result.status, result.exit_code, result.error) == ("cancelled", 137, "Cancelled")
