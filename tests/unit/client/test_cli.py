"""Unit tests of the `isol8` CLI in-process, against httpx.MockTransport.

They cover the commands the server cannot answer yet (sessions, files) and
the exit-code rules of isol8's CLI for event sequences a real program cannot
easily produce (a cut stream, an error without exit).
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import httpx
import pytest
from isol8_client import cli

from tests.unit.client.conftest import MockServer, result_json, sse

HOST = "http://isol8.test"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ISOL8_API_KEY", raising=False)
    monkeypatch.delenv("ISOL8_HOST", raising=False)


def isol8(server: MockServer, *args: str) -> int:
    return cli.main([*args, "--host", HOST, "--key", "k"], transport=server.transport)


def exit_stream(*events: dict[str, str]) -> httpx.Response:
    return httpx.Response(200, content=sse(*events))


# -- run -------------------------------------------------------------------------------


def test_run_streams_output_and_exits_with_the_programs_code(
    server: MockServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.route("POST", "/execute/stream", exit_stream(
        {"type": "stdout", "data": "out\n"}, {"type": "stderr", "data": "err\n"},
        {"type": "exit", "data": "3"}))
    assert isol8(server, "run", "-e", "print('out')") == 3
    assert capsys.readouterr() == ("out\n", "err\n")
    assert server.bodies("/execute/stream") == [{"request": {"runtime": "python", "code": "print('out')"}}]


@pytest.mark.parametrize(
    ("events", "code", "message"),
    [([{"type": "error", "data": "EXECUTION TIMED OUT"}, {"type": "exit", "data": "137"}], 137, "TIMED OUT"),
     ([{"type": "error", "data": "boom"}], 1, "[ERR] boom"),
     ([{"type": "error", "data": "boom"}, {"type": "exit", "data": "0"}], 1, "[ERR] boom"),
     ([{"type": "stdout", "data": "partial"}], 1, "ended before")],
)
def test_run_exit_code_follows_isol8_rules_for_error_events(
    server: MockServer, capsys: pytest.CaptureFixture[str], events: list[dict[str, str]], code: int,
    message: str,
) -> None:
    server.route("POST", "/execute/stream", exit_stream(*events))
    assert isol8(server, "run", "-e", "x") == code
    assert message in capsys.readouterr().err


def test_run_no_stream_prints_the_result_like_isol8(
    server: MockServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json(
        stdout="out", stderr="err", exitCode=4, truncated=True)))
    assert isol8(server, "run", "-e", "x", "--no-stream") == 4
    assert capsys.readouterr() == ("out\n", "err\n[WARN] Output was truncated\n")


def test_run_sends_limits_env_and_secrets(server: MockServer) -> None:
    server.route("POST", "/execute/stream", exit_stream({"type": "exit", "data": "0"}))
    assert isol8(server, "run", "--cmd", "env", "--stdin", "data", "--timeout", "5000", "--memory", "256m",
                 "--cpu", "0.5", "--pids-limit", "20", "--max-output", "100", "--net", "none",
                 "--workdir", "/sandbox", "--env", "A=1", "--env", "B=x=y", "--secret", "TOKEN=s3") == 0
    assert server.bodies("/execute/stream") == [{
        "request": {"runtime": "bash", "cmd": "env", "stdin": "data", "workdir": "/sandbox",
                    "env": {"A": "1", "B": "x=y"}},
        "options": {"timeoutMs": 5000, "memoryLimit": "256m", "cpuLimit": 0.5, "pidsLimit": 20,
                    "maxOutputSize": 100, "network": "none", "secrets": {"TOKEN": "s3"}},
    }]


@pytest.mark.parametrize(
    ("name", "runtime"),
    [("a.py", "python"), ("a.mjs", "node"), ("a.js", "node"), ("a.cjs", "node"), ("a.ts", "bun"),
     ("a.mts", "deno"), ("a.sh", "bash")],
)
def test_run_file_takes_the_runtime_from_its_extension_and_sends_it(
    server: MockServer, tmp_path: Path, name: str, runtime: str
) -> None:
    server.route("POST", "/execute/stream", exit_stream({"type": "exit", "data": "0"}))
    (tmp_path / name).write_text("code")
    assert isol8(server, "run", str(tmp_path / name)) == 0
    [body] = server.bodies("/execute/stream")
    assert body["request"] == {"runtime": runtime, "code": "code", "fileExtension": name[1:]}


def test_run_reads_code_from_stdin_without_file_or_eval(
    server: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.route("POST", "/execute/stream", exit_stream({"type": "exit", "data": "0"}))
    monkeypatch.setattr("sys.stdin", io.StringIO("print(2)\n"))
    assert isol8(server, "run") == 0
    assert server.bodies("/execute/stream")[0]["request"] == {"runtime": "python", "code": "print(2)\n"}


def test_run_persistent_makes_a_cli_session_and_deletes_it(server: MockServer) -> None:
    server.route("POST", "/execute/stream", exit_stream({"type": "exit", "data": "0"}))
    server.route("DELETE", "/session/x", httpx.Response(200, json={"ok": True}))
    assert isol8(server, "run", "-e", "x", "--persistent") == 0
    session = server.bodies("/execute/stream")[0]["sessionId"]
    assert re.fullmatch(r"cli-\d{13}", session)
    assert server.paths()[-1] == f"DELETE /session/{session}"


def test_run_with_explicit_session_id_keeps_the_session(server: MockServer) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json()))
    assert isol8(server, "run", "-e", "x", "--session-id", "mine", "--no-stream") == 0
    assert server.bodies("/execute")[0]["sessionId"] == "mine"
    assert server.paths() == ["POST /execute"]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["-e", "x", "--cmd", "y"], "Give only one of"),
     (["-e", "x", "--env", "NOEQUALS"], "--env expects KEY=VALUE"),
     (["/no/such/file.py"], "Cannot read /no/such/file.py"),
     (["README"], "Cannot detect runtime for README")],
)
def test_run_usage_mistakes_exit_2_with_one_line(
    server: MockServer, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    args: list[str], message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README").write_text("hi")
    assert isol8(server, "run", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("[ERR] ") and message in err and err.count("\n") == 1
    assert server.requests == []


def test_missing_key_or_host_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "-e", "x", "--host", HOST]) == 2
    assert capsys.readouterr().err == "[ERR] API key required: use --key or set ISOL8_API_KEY.\n"
    assert cli.main(["run", "-e", "x", "--key", "k"]) == 2
    assert "use --host URL or set ISOL8_HOST" in capsys.readouterr().err


def test_host_and_key_come_from_the_environment(
    server: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ISOL8_HOST", HOST)
    monkeypatch.setenv("ISOL8_API_KEY", "from-env")
    server.route("GET", "/sessions", httpx.Response(200, json={"sessions": []}))
    assert cli.main(["sessions", "list"], transport=server.transport) == 0
    assert server.requests[0].headers["Authorization"] == "Bearer from-env"


@pytest.mark.parametrize(
    ("response", "expected"),
    [(httpx.Response(401, json={"error": "Invalid API key", "code": "unauthorized"}),
      "[ERR] Authentication failed (401): Invalid API key. Check --key or ISOL8_API_KEY."),
     (httpx.Response(429, json={"error": "Quota exceeded: at most 1 executions per minute",
                                "code": "quota_exceeded"}, headers={"Retry-After": "41"}),
      "[ERR] Quota exceeded (429 quota_exceeded): Quota exceeded: at most 1 executions per minute; "
      "Retry-After: 41 s (or pass --retry to wait automatically)"),
     (httpx.Response(503, json={"error": "No worker", "code": "unavailable"}, headers={"Retry-After": "5"}),
      "[ERR] Server unavailable (503): No worker; Retry-After: 5 s"),
     (httpx.Response(403, json={"error": "memoryLimit above cap", "code": "policy_denied"}),
      "[ERR] Not allowed (403 policy_denied): memoryLimit above cap"),
     (httpx.Response(400, json={"error": "runtime: bad", "code": "validation_error"}),
      "[ERR] runtime: bad (400 validation_error)")],
)
def test_server_errors_are_one_clear_line_and_exit_1(
    server: MockServer, capsys: pytest.CaptureFixture[str], response: httpx.Response, expected: str
) -> None:
    server.route("POST", "/execute/stream", response)
    assert isol8(server, "run", "-e", "x") == 1
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1


# -- stateful cells ---------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n\x00plot"
VALUE_PNG = b"\x89PNG\r\n\x1a\n\x00value"
SVG = '<svg xmlns="http://www.w3.org/2000/svg"><text>é</text></svg>'


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def cell_stream(*events: dict[str, object]) -> httpx.Response:
    """A stream answer carrying the execution id, as the server sends it."""
    return httpx.Response(200, content=sse(*events), headers={"X-Execution-Id": "e-1"})


def test_run_stateful_streams_then_prints_the_value_from_the_history(
    server: MockServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.route("POST", "/execute/stream", cell_stream(
        {"type": "stdout", "data": "out\n"}, {"type": "stderr", "data": "err\n"}, {"type": "exit", "data": "0"}))
    server.route("GET", "/executions/e-1", httpx.Response(200, json=result_json(
        value={"text/plain": "43", "text/html": "<b>43</b>"})))
    assert isol8(server, "run", "-e", "x + 1", "--session", "s1", "--stateful") == 0
    assert capsys.readouterr() == ("out\n43\n", "err\n")
    assert server.bodies("/execute/stream") == [
        {"request": {"runtime": "python", "code": "x + 1"}, "sessionId": "s1", "stateful": True}]
    assert server.paths() == ["POST /execute/stream", "GET /executions/e-1"]  # the named session stays


def test_run_stateful_no_stream_prints_output_then_value_and_keeps_the_exit_code(
    server: MockServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json(
        stdout="out", stderr="ZeroDivisionError: division by zero", exitCode=1, value=None,
        exception={"ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": []})))
    assert isol8(server, "run", "-e", "1/0", "--session-id", "s1", "--stateful", "--no-stream") == 1
    assert capsys.readouterr() == ("out\n", "ZeroDivisionError: division by zero\n")
    assert server.bodies("/execute")[0]["stateful"] is True
    server.route("POST", "/execute", httpx.Response(200, json=result_json(stdout="", value={"text/plain": "'a'"})))
    assert isol8(server, "run", "-e", "'a'", "--session", "s1", "--stateful", "--no-stream") == 0
    assert capsys.readouterr() == ("'a'\n", "")


def test_run_save_outputs_writes_outputs_then_value_with_decoded_bytes(
    server: MockServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    outputs = [{"type": "display", "data": {"image/png": b64(PNG), "text/plain": "<Figure>"}},
               {"type": "display", "data": {"text/plain": "table"}},
               {"type": "display", "data": {"text/html": "<table></table>", "image/svg+xml": SVG}}]
    server.route("POST", "/execute/stream", cell_stream(
        {"type": "display", "data": outputs[0]["data"]}, {"type": "exit", "data": "0"}))
    server.route("GET", "/executions/e-1", httpx.Response(200, json=result_json(
        stdout="", outputs=outputs, value={"image/png": b64(VALUE_PNG), "text/plain": "<Image>"})))
    target = tmp_path / "plots" / "run1"
    assert isol8(server, "run", "-e", "plot()", "--session", "s1", "--stateful", "--save-outputs", str(target)) == 0
    names = ["output-1.png", "output-2.svg", "output-3.html", "output-4.png"]
    assert sorted(path.name for path in target.iterdir()) == names
    assert (target / "output-1.png").read_bytes() == PNG
    assert (target / "output-2.svg").read_bytes() == SVG.encode()
    assert (target / "output-3.html").read_text() == "<table></table>"
    assert (target / "output-4.png").read_bytes() == VALUE_PNG
    out, err = capsys.readouterr()
    assert out == "<Image>\n"
    assert err.splitlines() == [str(target / name) for name in names]


def test_run_save_outputs_falls_back_to_the_streamed_displays(
    server: MockServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server.route("POST", "/execute/stream", cell_stream(
        {"type": "display", "data": {"image/png": b64(PNG)}}, {"type": "stdout", "data": "done\n"},
        {"type": "exit", "data": "0"}))
    # No history route (the original isol8 server): a warning, and the stream's displays are saved.
    assert isol8(server, "run", "-e", "plot()", "--session", "s1", "--save-outputs", str(tmp_path)) == 0
    assert (tmp_path / "output-1.png").read_bytes() == PNG
    out, err = capsys.readouterr()
    assert out == "done\n"
    assert err.splitlines() == ["[WARN] Could not fetch the run's value and outputs: Not found (404 not_found)",
                                str(tmp_path / "output-1.png")]


def test_run_without_cell_flags_ignores_display_events_and_asks_nothing_more(
    server: MockServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.route("POST", "/execute/stream", cell_stream(
        {"type": "display", "data": {"text/plain": "shown"}}, {"type": "novel", "data": "?"},
        {"type": "stdout", "data": "out\n"}, {"type": "exit", "data": "0"}))
    assert isol8(server, "run", "-e", "x", "--session", "s1") == 0
    assert capsys.readouterr() == ("out\n", "")
    assert server.paths() == ["POST /execute/stream"]
    assert "stateful" not in server.bodies("/execute/stream")[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--stateful"], "--stateful needs --session"),
     (["--stateful", "--persistent"], "--stateful needs --session"),
     (["--stateful", "--session", "s1", "-i"], "neither --stateful nor --save-outputs"),
     (["--save-outputs", "out", "-i"], "neither --stateful nor --save-outputs")],
)
def test_run_cell_flag_mistakes_exit_2_with_one_line(
    server: MockServer, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert isol8(server, "run", "-e", "x", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("[ERR] ") and message in err and err.count("\n") == 1
    assert server.requests == []


# -- sessions and files ---------------------------------------------------------------------


def test_sessions_list_prints_a_table_or_json(server: MockServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.route("GET", "/sessions", httpx.Response(200, json={"sessions": [
        {"id": "s1", "isActive": True, "lastAccessedAt": "2025-01-01T00:00:00Z", "runtime": "python",
         "state": "ready"}]}))
    assert isol8(server, "sessions", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "ACTIVE", "RUNTIME", "STATE", "LAST", "ACCESSED"]
    assert lines[1].split() == ["s1", "yes", "python", "ready", "2025-01-01T00:00:00Z"]
    assert isol8(server, "sessions", "list", "--json") == 0
    assert '"id": "s1"' in capsys.readouterr().out


def test_sessions_list_says_when_there_are_none(
    server: MockServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.route("GET", "/sessions", httpx.Response(200, json={"sessions": []}))
    assert isol8(server, "sessions", "list") == 0
    assert capsys.readouterr().out == "No sessions.\n"


def test_sessions_stop_deletes_the_session(server: MockServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.route("DELETE", "/session/s1", httpx.Response(200, json={"ok": True}))
    assert isol8(server, "sessions", "stop", "s1") == 0
    assert server.paths() == ["DELETE /session/s1"]
    assert capsys.readouterr().out == "Session s1 stopped.\n"


def test_file_put_uploads_bytes_to_the_session(server: MockServer, tmp_path: Path) -> None:
    payload = bytes(range(256))
    (tmp_path / "data.bin").write_bytes(payload)
    server.route("POST", "/file", httpx.Response(200, json={"ok": True}))
    local = str(tmp_path / "data.bin")
    assert isol8(server, "file", "put", local, "/sandbox/data.bin", "--session-id", "s1") == 0
    [body] = server.bodies("/file")
    assert (body["sessionId"], body["path"], base64.b64decode(body["content"])) == (
        "s1", "/sandbox/data.bin", payload)


def test_file_get_writes_to_a_file_its_name_or_stdout(
    server: MockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    payload = b"\x00\xffresult"
    server.route("GET", "/file", httpx.Response(200, json={"content": base64.b64encode(payload).decode()}))
    monkeypatch.chdir(tmp_path)
    assert isol8(server, "file", "get", "/sandbox/out.bin", "copy.bin", "--session-id", "s1") == 0
    assert isol8(server, "file", "get", "/sandbox/out.bin", "--session-id", "s1") == 0
    assert (tmp_path / "copy.bin").read_bytes() == payload == (tmp_path / "out.bin").read_bytes()
    capsysbinary.readouterr()
    assert isol8(server, "file", "get", "/sandbox/out.bin", "-", "--session-id", "s1") == 0
    assert capsysbinary.readouterr().out == payload
    assert dict(server.requests[0].url.params) == {"sessionId": "s1", "path": "/sandbox/out.bin"}


def test_file_get_of_a_missing_file_is_one_error_line(
    server: MockServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.route("GET", "/file", httpx.Response(404, json={"error": "File not found", "code": "not_found"}))
    assert isol8(server, "file", "get", "nope", "--session-id", "s1") == 1
    assert capsys.readouterr().err == "[ERR] File not found (404 not_found)\n"


def test_file_commands_require_a_session_id(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["file", "get", "x", "--host", HOST, "--key", "k"])
    assert caught.value.code == 2
    assert "--session-id" in capsys.readouterr().err


# -- serve ----------------------------------------------------------------------------------


def test_serve_outside_a_checkout_explains_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["serve", "--port", "3000"]) == 2
    assert "no manage.py was found" in capsys.readouterr().err


def test_serve_execs_manage_py_serve_of_the_nearest_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "manage.py").write_text("")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(cli.os, "execv", lambda path, argv: calls.append((path, argv)))
    cli.main(["serve", "--port", "3001", "--help"])
    assert calls == [(cli.sys.executable, [cli.sys.executable, str(tmp_path / "manage.py"), "serve",
                                           "--port", "3001", "--help"])]
