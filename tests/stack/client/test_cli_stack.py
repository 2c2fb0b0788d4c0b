"""The installed `isol8` command against the real stack, as a user would run it."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack, free_port, make_key, wait_healthy
from tests.stack.client.conftest import ISOL8, ROOT, cli_env, isol8

pytestmark = pytest.mark.stack


@pytest.fixture
def env(stack: Stack, api_key: str) -> dict[str, str]:
    """Host and key from the environment, as a user's shell would set them."""
    return cli_env(ISOL8_HOST=stack.url, ISOL8_API_KEY=api_key)


# -- run -------------------------------------------------------------------------------


def test_run_eval_with_host_and_key_flags(stack: Stack, api_key: str) -> None:
    run = isol8("run", "-e", "print('hello')", "--runtime", "python", "--host", stack.url, "--key", api_key)
    assert (run.returncode, run.stdout, run.stderr) == (0, "hello\n", "")


def test_run_passes_the_programs_exit_code_through(env: dict[str, str]) -> None:
    run = isol8("run", "-e", "import sys; sys.exit(3)", env=env)
    assert run.returncode == 3


def test_run_streams_output_live(env: dict[str, str]) -> None:
    code = "import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second', flush=True)\n"
    proc = subprocess.Popen([str(ISOL8), "run", "-e", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    first_at = time.monotonic()
    still_running = proc.poll() is None
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    ended_at = time.monotonic()
    assert (first, rest, proc.returncode) == (b"first\n", b"second\n", 0)
    # The first line reached our pipe while the program slept: the CLI neither
    # buffered it nor waited for the end (compared with the 2 s sleep, not a latency figure).
    assert still_running
    assert ended_at - first_at > 1.0


def test_ctrl_c_cancels_the_program_on_the_server(env: dict[str, str], stack: Stack) -> None:
    code = "import time\nprint('started', flush=True)\ntime.sleep(600)\n"
    # A shell runs background jobs with SIGINT ignored, and children inherit that
    # (CI may be such a job): give the CLI the default disposition a terminal gives it.
    proc = subprocess.Popen([str(ISOL8), "run", "-e", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    with stack.client(env["ISOL8_API_KEY"]) as api:
        deadline = time.monotonic() + 10
        latest = api.get("/executions").json()["results"][0]
        while latest["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
            latest = api.get("/executions").json()["results"][0]
    assert latest["status"] == "cancelled"


def test_run_keeps_stdout_and_stderr_apart(env: dict[str, str]) -> None:
    run = isol8("run", "--cmd", "echo out; echo err >&2; exit 5", env=env)
    assert (run.returncode, run.stdout, run.stderr) == (5, "out\n", "err\n")


def test_run_no_stream_prints_the_result_and_exits_with_its_code(env: dict[str, str]) -> None:
    code = "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(2)"
    run = isol8("run", "-e", code, "--no-stream", env=env)
    assert (run.returncode, run.stdout, run.stderr) == (2, "out\n", "err\n")


@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [("script.py", "import sys; print(sys.version_info[0])", "3"),
     ("script.cjs", "console.log(typeof require)", "function"),  # CommonJS: fileExtension was sent
     ("script.mjs", "console.log(typeof require)", "undefined"),
     ("script.sh", "echo $((6 * 7))", "42")],
)
def test_run_file_picks_the_runtime_from_its_extension(
    env: dict[str, str], tmp_path: Path, name: str, source: str, expected: str
) -> None:
    (tmp_path / name).write_text(source)
    run = isol8("run", str(tmp_path / name), env=env)
    assert (run.returncode, run.stdout, run.stderr) == (0, expected + "\n", "")


def test_run_reads_code_from_stdin(env: dict[str, str]) -> None:
    run = isol8("run", input="print(40 + 2)\n", env=env)
    assert (run.returncode, run.stdout) == (0, "42\n")


def test_run_options_stdin_env_secret_limits(env: dict[str, str]) -> None:
    code = "import os, sys\nprint(sys.stdin.read(), os.environ['A'], os.environ['TOKEN'])"
    run = isol8("run", "-e", code, "--stdin", "piped", "--env", "A=x=y", "--secret", "TOKEN=hunter2",
                "--memory", "256m", "--cpu", "0.5", "--timeout", "10000", env=env)
    assert (run.returncode, run.stdout) == (0, "piped x=y ***\n")


def test_run_timeout_reports_and_exits_137(env: dict[str, str]) -> None:
    run = isol8("run", "-e", "import time; time.sleep(30)", "--timeout", "1000", env=env)
    assert run.returncode == 137
    assert "[ERR] EXECUTION TIMED OUT" in run.stderr


# -- errors ------------------------------------------------------------------------------


def test_missing_key_is_one_line_and_exit_2(stack: Stack) -> None:
    run = isol8("run", "-e", "print(1)", "--host", stack.url)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == "[ERR] API key required: use --key or set ISOL8_API_KEY.\n"


def test_unreachable_host_is_one_line_and_exit_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = isol8("run", "-e", "print(1)", "--host", url, "--key", "k")
    assert run.returncode == 1
    assert run.stderr.startswith(f"[ERR] Cannot connect to the isol8 server at {url}")
    assert "refused" in run.stderr.lower() and run.stderr.count("\n") == 1


def test_bad_key_is_one_line_and_exit_1(stack: Stack) -> None:
    run = isol8("run", "-e", "print(1)", "--host", stack.url, "--key", "isol8_" + "0" * 64)
    assert run.returncode == 1
    assert run.stderr == (
        "[ERR] Authentication failed (401): Invalid API key. Check --key or ISOL8_API_KEY.\n")


def test_quota_hit_is_one_line_mentioning_retry_after(stack: Stack, transactional_db: Any) -> None:
    from tenants.services import tenant_create

    key = make_key(tenant_create(slug=f"q-{time.monotonic_ns()}", max_per_minute=1))
    env = cli_env(ISOL8_HOST=stack.url, ISOL8_API_KEY=key)
    assert isol8("run", "-e", "print(1)", env=env).returncode == 0
    run = isol8("run", "-e", "print(1)", env=env)
    assert run.returncode == 1 and run.stderr.count("\n") == 1
    assert run.stderr.startswith("[ERR] Quota exceeded (429 quota_exceeded): ")
    assert "Retry-After: " in run.stderr


def test_other_server_errors_show_the_servers_message(env: dict[str, str]) -> None:
    run = isol8("run", "-e", "print(1)", "--runtime", "cobol", env=env)
    assert run.returncode == 1
    assert run.stderr.startswith("[ERR] Unknown runtime 'cobol'")
    assert "(400 unsupported_runtime)" in run.stderr


# -- sessions and files -------------------------------------------------------------------


def test_session_id_keeps_state_across_two_runs_and_the_session(env: dict[str, str]) -> None:
    name = f"cli-test-{time.monotonic_ns()}"
    first = isol8("run", "-e", "open('/sandbox/n.txt', 'w').write('41')", "--session-id", name, env=env)
    assert first.returncode == 0, first.stderr
    second = isol8("run", "-e", "print(int(open('/sandbox/n.txt').read()) + 1)", "--session-id", name,
                   env=env)
    assert (second.returncode, second.stdout) == (0, "42\n"), second.stderr
    listing = isol8("sessions", "list", env=env)
    assert listing.returncode == 0 and name in listing.stdout
    assert isol8("sessions", "stop", name, env=env).returncode == 0
    assert name not in isol8("sessions", "list", env=env).stdout


def test_persistent_run_deletes_its_session_at_exit(env: dict[str, str]) -> None:
    run = isol8("run", "-e", "print(1)", "--persistent", env=env)
    assert (run.returncode, run.stdout, run.stderr) == (0, "1\n", "")
    listing = isol8("sessions", "list", env=env)
    assert listing.returncode == 0 and "cli-" not in listing.stdout


def test_file_put_and_get_round_trip_binary_data(env: dict[str, str], tmp_path: Path) -> None:
    name = f"cli-files-{time.monotonic_ns()}"
    payload = bytes(range(256)) * 16
    (tmp_path / "in.bin").write_bytes(payload)
    assert isol8("run", "-e", "print(1)", "--session-id", name, env=env).returncode == 0
    put = isol8("file", "put", str(tmp_path / "in.bin"), "/sandbox/in.bin", "--session-id", name, env=env)
    assert put.returncode == 0, put.stderr
    copy = "import shutil; shutil.copy('/sandbox/in.bin', '/sandbox/out.bin')"
    assert isol8("run", "-e", copy, "--session-id", name, env=env).returncode == 0
    get = isol8("file", "get", "/sandbox/out.bin", str(tmp_path / "out.bin"), "--session-id", name, env=env)
    assert get.returncode == 0, get.stderr
    assert (tmp_path / "out.bin").read_bytes() == payload
    isol8("sessions", "stop", name, env=env)


def test_sessions_list_json_describes_the_session(env: dict[str, str]) -> None:
    name = f"cli-json-{time.monotonic_ns()}"
    assert isol8("run", "-e", "print(1)", "--session-id", name, env=env).returncode == 0
    listing = isol8("sessions", "list", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    [entry] = [s for s in json.loads(listing.stdout) if s["id"] == name]
    assert entry["runtime"] == "python" and entry["isActive"] is False
    assert isol8("sessions", "stop", name, env=env).stdout == f"Session {name} stopped.\n"


def test_file_errors_are_one_line_with_the_servers_message(env: dict[str, str], tmp_path: Path) -> None:
    name = f"cli-file-errors-{time.monotonic_ns()}"
    assert isol8("run", "-e", "print(1)", "--session-id", name, env=env).returncode == 0
    missing = isol8("file", "get", "/sandbox/nope.txt", str(tmp_path / "x"), "--session-id", name, env=env)
    (tmp_path / "f.txt").write_text("x")
    outside = isol8("file", "put", str(tmp_path / "f.txt"), "/etc/passwd", "--session-id", name, env=env)
    isol8("sessions", "stop", name, env=env)
    assert missing.returncode == 1 and "(404 not_found)" in missing.stderr
    assert outside.returncode == 1 and "(400 path_outside_sandbox)" in outside.stderr
    for run in (missing, outside):
        assert run.stderr.startswith("[ERR] ") and run.stderr.count("\n") == 1


# -- serve -------------------------------------------------------------------------------


def test_serve_outside_the_checkout_is_a_clear_error(tmp_path: Path) -> None:
    run = isol8("serve", "--port", "3000", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.startswith("[ERR] isol8 serve runs the server of an isol8 project checkout")


def test_serve_in_the_checkout_delegates_to_manage_py() -> None:
    run = isol8("serve", "--help", cwd=ROOT / "executions")
    assert run.returncode == 0
    assert "manage.py serve" in run.stdout and "--generate-key" in run.stdout


def test_serve_runs_a_server_that_isol8_run_can_use(tmp_path: Path) -> None:
    """The whole loop: `isol8 serve` in the checkout, then `isol8 run --host` against it.

    It gets its own database, queue and worker name so it cannot take the
    test stack's work, and is stopped by its own PID (exec kept the PID).
    """
    port, host_name = free_port(), f"serve-{os.getpid()}-{time.monotonic_ns()}"
    env = cli_env(DATABASE_URL=f"sqlite:///{tmp_path / 'serve.sqlite3'}", ISOL8_WORKER_HOST=host_name,
                  ISOL8_RUN_QUEUE=f"isol8.run.{host_name}", ISOL8_DATA_DIR=str(tmp_path))
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([str(ISOL8), "serve", "--port", str(port), "--key", "serve-master-key-7f3e91ab24",
                             "--no-beat"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=120, proc=proc, log=tmp_path / "serve.log")
        run = isol8("run", "-e", "print('served')", "--host", f"http://127.0.0.1:{port}",
                    "--key", "serve-master-key-7f3e91ab24")
        assert (run.returncode, run.stdout, run.stderr) == (0, "served\n", "")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


# -- run -i and shell: the WebSocket route from the command line ---------------------


def test_run_interactive_answers_each_line_as_it_is_sent(env: dict[str, str]) -> None:
    code = "import sys\nfor line in sys.stdin:\n    print('got', line.strip(), flush=True)\nprint('eof')\n"
    proc = subprocess.Popen([str(ISOL8), "run", "-i", "-e", code], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    for word in ("one", "two", "three"):
        proc.stdin.write(f"{word}\n".encode())
        proc.stdin.flush()
        # Its answer comes before the next line is sent: the input is live, not gathered.
        assert proc.stdout.readline() == f"got {word}\n".encode()
    proc.stdin.close()
    assert proc.stdout.read() == b"eof\n"
    assert proc.wait(timeout=30) == 0


def test_run_interactive_ctrl_c_reaches_the_program(env: dict[str, str]) -> None:
    code = (
        "import time\ntry:\n    print('ready', flush=True)\n    time.sleep(60)\n"
        "except KeyboardInterrupt:\n    print('interrupted', flush=True)\n    raise SystemExit(4)\n"
    )
    proc = subprocess.Popen([str(ISOL8), "run", "-i", "-e", code], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    # The program's own handler ran in the sandbox and chose its exit code; the CLI lived on to pass it.
    assert proc.stdout.readline() == b"interrupted\n"
    assert proc.wait(timeout=30) == 4


def test_run_interactive_without_code_is_a_usage_error(env: dict[str, str]) -> None:
    run = isol8("run", "-i", env=env, input="print(1)")
    assert run.returncode == 2 and "-i gives stdin to the program" in run.stderr


class Terminal:
    """The `isol8` command on a pseudo-terminal of its own, as a user's terminal runs it."""

    def __init__(self, args: list[str], env: dict[str, str], *, cols: int = 100, rows: int = 30) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen([str(ISOL8), *args], env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.seen = b""

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def expect(self, text: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not seen in {self.seen!r}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # the command ended and closed the terminal
                    assert text in self.seen, f"{text!r} not seen in {self.seen!r}"

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.master)


def test_shell_is_a_terminal_in_the_session_and_its_files_stay(env: dict[str, str], stack: Stack) -> None:
    session = f"shell-{os.getpid()}"
    assert isol8("run", "--session-id", session, "-r", "python", "-e", "print('made')", env=env).returncode == 0
    term = Terminal(["shell", session], env)
    try:
        term.expect(b"$ ")
        term.type(b"stty size; echo $((6*7)) > answer.txt; cat answer.txt\r")
        term.expect(b"30 100")  # this terminal's size, sent on start
        term.expect(b"42")
        term.type(b"sleep 60\r")
        time.sleep(1)
        term.type(b"\x03")  # Ctrl-C in raw mode: the sandbox's terminal makes it a SIGINT of sleep
        term.type(b"echo after-interrupt\r")
        term.expect(b"after-interrupt\r\n")
        term.type(b"exit 3\r")
        assert term.close() == 3
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    # The same session over HTTP sees the file the shell wrote.
    got = isol8("file", "get", "/sandbox/answer.txt", "-", "--session-id", session, env=env)
    assert (got.returncode, got.stdout) == (0, "42\n")
    assert isol8("sessions", "stop", session, env=env).returncode == 0


# -- stateful sessions -------------------------------------------------------------------


def test_stateful_cells_print_their_value_and_save_the_plots(stack: Stack, env: dict[str, str],
                                                             tmp_path: Path) -> None:
    if stack.mode != "launcher":
        pytest.skip("stateful sessions run in launcher mode")
    first = isol8("run", "-e", "x = 41", "--session", "nb-cli", "--stateful", env=env)
    assert (first.returncode, first.stdout) == (0, ""), first.stderr
    second = isol8("run", "-e", "x + 1", "--session", "nb-cli", "--stateful", env=env)
    assert (second.returncode, second.stdout) == (0, "42\n"), second.stderr
    plot = tmp_path / "plot.py"
    plot.write_text("import matplotlib.pyplot as plt\nplt.figure(figsize=(2, 1), dpi=50)\nplt.plot([1, 2])\n"
                    "print('drawn')\n")
    saved = isol8("run", str(plot), "--session", "nb-cli", "--stateful", "--save-outputs", str(tmp_path / "out"),
                  env=env)
    assert saved.returncode == 0 and saved.stdout == "drawn\n", saved.stderr
    image = tmp_path / "out" / "output-1.png"
    assert str(image) in saved.stderr
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", image.read_bytes()[16:24]) == (100, 50)
    failed = isol8("run", "-e", "1 / 0", "--session", "nb-cli", "--stateful", env=env)
    assert failed.returncode == 1 and "ZeroDivisionError" in failed.stderr
