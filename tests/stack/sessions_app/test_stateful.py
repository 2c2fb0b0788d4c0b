"""Stateful sessions through the real stack (issue 18): a live interpreter per session, cells, plots.

Launcher mode only: the interpreter is kept by the launcher inside the
session's container (exec mode refuses ``stateful`` with a 400, tested here
too). Streams are read with httpx-sse and websockets, not with our client.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from websockets.sync.client import connect as ws_connect

from executions.models import Execution
from tests.conftest import Stack, run

pytestmark = pytest.mark.stack


@pytest.fixture
def launcher(stack: Stack) -> Stack:
    if stack.mode != "launcher":
        pytest.skip("stateful sessions run in launcher mode (exec mode refuses them, see below)")
    return stack


def cell(api: httpx.Client, session: str, code: str, runtime: str = "python", *,
         options: dict[str, Any] | None = None, **request: Any) -> dict[str, Any]:
    response = run(api, {"runtime": runtime, "code": code, **request}, options, sessionId=session, stateful=True)
    assert response.status_code == 200, response.text
    return dict(response.json())


def text(result: dict[str, Any]) -> str | None:
    value = result.get("value")
    return None if value is None else value.get("text/plain")


def png_size(data: str) -> tuple[int, int]:
    raw = base64.b64decode(data)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


# ------------------------------------------------------------------- values


def test_python_variables_imports_and_functions_live_between_cells(api, launcher):
    first = cell(api, "py", "x = 42")
    assert first["exitCode"] == 0 and first["value"] is None and first["stateLost"] is False
    second = cell(api, "py", "x + 1")
    assert text(second) == "43" and second["outputs"] == [] and second["exception"] is None
    cell(api, "py", "import statistics\ndef spread(xs):\n    return max(xs) - min(xs)")
    third = cell(api, "py", "print(statistics.mean([1, 2, 3]))\nspread([3, 9, 4])")
    assert third["stdout"] == "2" and text(third) == "6"
    # Later executes may leave `stateful` out: the session keeps it.
    later = run(api, {"runtime": "python", "code": "x * 2"}, sessionId="py").json()
    assert text(later) == "84"


def test_node_let_and_top_level_await(api, launcher):
    cell(api, "js", "let a = 1", "node")
    assert text(cell(api, "js", "a + 1", "node")) == "2"
    result = cell(api, "js", "const b = await new Promise((r) => setTimeout(() => r(a + 9), 20));\nb", "node")
    assert text(result) == "10"
    assert text(cell(api, "js", "b * 2", "node")) == "20"


def test_bash_keeps_its_directory_and_exports(api, launcher):
    cell(api, "sh", "cd /tmp; export V=1; greet() { echo \"hi $1\"; }", "bash")
    result = cell(api, "sh", 'pwd; echo "V=$V"; greet there', "bash")
    assert result["stdout"] == "/tmp\nV=1\nhi there" and result["exitCode"] == 0
    assert cell(api, "sh", "false", "bash")["exitCode"] == 1


# ------------------------------------------------------------- rich outputs


def test_a_matplotlib_figure_comes_back_as_a_png_of_its_size(api, launcher):
    code = ("import matplotlib.pyplot as plt\nfig = plt.figure(figsize=(4, 3), dpi=50)\n"
            "plt.plot([1, 2, 3], [1, 4, 9])\nprint('drawn')")
    result = cell(api, "plot", code)
    assert result["stdout"] == "drawn", result
    [shown] = result["outputs"]
    assert shown["type"] == "display" and "Figure" in shown["data"]["text/plain"]
    assert png_size(shown["data"]["image/png"]) == (200, 150)
    again = cell(api, "plot", "plt.figure(figsize=(2, 2), dpi=50); plt.plot([0, 1]); plt.show()\nprint('after')")
    assert [png_size(o["data"]["image/png"]) for o in again["outputs"]] == [(100, 100)]
    assert cell(api, "plot", "len(plt.get_fignums())")["value"]["text/plain"] == "0"  # shown, then closed


def test_a_dataframe_comes_back_as_html_and_text(api, launcher):
    result = cell(api, "df", "import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Rome'], 'temp': [3, 18]})")
    value = result["value"]
    assert "<table" in value["text/html"] and "Oslo" in value["text/html"]
    assert "city" in value["text/plain"] and "Rome" in value["text/plain"]


def test_display_calls_come_in_order_with_the_value(api, launcher):
    code = ("class Card:\n    def _repr_html_(self):\n        return '<b>card</b>'\n"
            "display('one')\ndisplay(Card())\n{'k': [1, 2]}")
    result = cell(api, "disp", code)
    assert result["outputs"][0]["data"]["text/plain"] == "'one'"
    assert result["outputs"][1]["data"]["text/html"] == "<b>card</b>"
    assert text(result) == "{'k': [1, 2]}"


def test_an_exception_is_structured_with_the_cells_frames_and_kept_in_history(api, launcher, tenant):
    cell(api, "exc", "def f():\n    return {}['missing']")
    result = cell(api, "exc", "f()")
    assert result["exitCode"] == 1 and result["value"] is None
    exc = result["exception"]
    assert exc["ename"] == "KeyError" and exc["evalue"] == "'missing'"
    trace = "".join(exc["traceback"])
    assert '"<cell' in trace and "python_kernel" not in trace and "isol8" not in trace
    assert "KeyError: 'missing'" in result["stderr"]
    record = api.get(f"/executions/{result['executionId']}").json()
    assert record["exception"]["ename"] == "KeyError" and record["stateLost"] is False


# ------------------------------------------------------------------- edges


def test_a_timed_out_loop_is_interrupted_and_the_state_is_kept(api, launcher):
    cell(api, "tmo", "kept = 'yes'")
    started = time.monotonic()
    result = cell(api, "tmo", "while True:\n    pass", timeoutMs=1000)
    assert time.monotonic() - started < 10
    assert result["status"] == "timeout" and result["stateLost"] is False, result
    assert "KeyboardInterrupt" in result["stderr"]
    assert text(cell(api, "tmo", "kept")) == "'yes'"


def test_a_cell_that_ignores_the_interrupt_is_killed_and_the_state_is_lost(api, launcher):
    cell(api, "stub", "kept = 1")
    stubborn = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    result = cell(api, "stub", stubborn, timeoutMs=800)
    assert result["status"] == "timeout" and result["stateLost"] is True
    after = cell(api, "stub", "kept")
    assert after["exception"]["ename"] == "NameError" and after["stateLost"] is False


def test_an_out_of_memory_cell_reports_state_lost(api, launcher):
    cell(api, "oom", "kept = 1", options={"memoryLimit": "128m"})
    result = cell(api, "oom", "hog = b'x' * (512 << 20)")
    assert result["stateLost"] is True and result["exitCode"] == 137, result
    after = cell(api, "oom", "print('alive')\nkept")
    assert after["stdout"] == "alive" and after["exception"]["ename"] == "NameError"


def test_restart_gives_a_new_interpreter_and_keeps_the_files(api, launcher):
    cell(api, "rs", "y = 5\nopen('kept.txt', 'w').write('file')")
    answer = api.post("/session/rs/restart")
    assert answer.status_code == 200 and answer.json() == {"ok": True, "restarted": True}
    after = cell(api, "rs", "print(open('kept.txt').read())\ny")
    assert after["stdout"] == "file" and after["exception"]["ename"] == "NameError"
    assert after["stateLost"] is False  # the client asked for it
    assert text(cell(api, "rs", "z = 1\nz")) == "1"


def test_two_cells_never_run_at_once(api, launcher):
    cell(api, "busy", "import time")
    slow: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: slow.update(cell(api, "busy", "time.sleep(3)\n'slept'")))
    thread.start()
    time.sleep(1.0)
    second = run(api, {"runtime": "python", "code": "1"}, sessionId="busy", stateful=True)
    thread.join()
    assert second.status_code == 409 and second.json()["code"] == "session_busy", second.text
    assert text(slow) == "'slept'"


def test_a_requests_env_and_secrets_are_the_cells_only_and_masked(api, launcher):
    first = cell(api, "env", "import os\nprint(os.environ['TOKEN'], os.environ['MODE'])\nos.environ['TOKEN']",
                 options={"secrets": {"TOKEN": "s3cr3t-value"}}, env={"MODE": "fast"})
    assert first["stdout"] == "*** fast" and text(first) == "'***'"
    later = cell(api, "env", "[os.environ.get('TOKEN'), os.environ.get('MODE')]")
    assert text(later) == "[None, None]"


def test_the_interpreter_runs_as_the_sandbox_user(api, launcher):
    result = cell(api, "who", "import os\nprint(os.getuid(), os.getgid())\nos.listdir('/proc/1/fd')")
    uid = int(result["stdout"].split()[0])
    assert uid != 0
    assert result["exception"]["ename"] == "PermissionError"


def test_sessions_that_are_not_stateful_keep_isol8_semantics(api, stack):
    first = run(api, {"runtime": "python", "code": "x = 42"}, sessionId="plain").json()
    second = run(api, {"runtime": "python", "code": "print(x)"}, sessionId="plain").json()
    assert first["exitCode"] == 0 and second["exitCode"] == 1 and "NameError" in second["stderr"]
    assert "value" not in second and "stateLost" not in second
    switched = run(api, {"runtime": "python", "code": "1"}, sessionId="plain", stateful=True)
    assert switched.status_code == 400 and switched.json()["code"] == "validation_error"


def test_exec_mode_refuses_stateful_with_a_sentence(api, stack):
    if stack.mode != "exec":
        pytest.skip("exec mode only")
    response = run(api, {"runtime": "python", "code": "1"}, sessionId="ex", stateful=True)
    assert response.status_code == 400 and "launcher" in response.json()["error"]
    assert not Execution.objects.exists()


# -------------------------------------------------------------- transports


DISPLAY_CELLS = {
    "python": ("print('before')\ndisplay({'a': 1})\nprint('after')\n7 * 6", "{'a': 1}"),
    "node": ("console.log('before');\ndisplay({a: 1});\nconsole.log('after');\n7 * 6", "{ a: 1 }"),
}


@pytest.mark.parametrize("runtime", sorted(DISPLAY_CELLS))
def test_sse_carries_display_events_in_order(api, launcher, runtime):
    code, shown = DISPLAY_CELLS[runtime]
    body = {"request": {"runtime": runtime, "code": code}, "sessionId": f"sse-{runtime}", "stateful": True}
    with connect_sse(api, "POST", "/execute/stream", json=body) as source:
        events = [(sse.event, sse.json()) for sse in source.iter_sse()]
    kinds = [kind for kind, _ in events]
    assert kinds.index("display") > 0 and kinds[-1] == "exit"
    display = next(data for kind, data in events if kind == "display")
    assert display["data"] == {"text/plain": shown} and display["phase"] == "code"
    out = "".join(data["data"] for kind, data in events if kind == "stdout")
    assert out.startswith("before") and out.index("before") < out.index("after")
    before = next(i for i, (k, d) in enumerate(events) if k == "stdout" and "before" in d["data"])
    after = next(i for i, (k, d) in enumerate(events) if k == "stdout" and "after" in d["data"])
    assert before < kinds.index("display") < after
    execution_id = source.response.headers["X-Execution-Id"]
    record = api.get(f"/executions/{execution_id}").json()
    assert record["value"] == {"text/plain": "42"}
    assert record["outputs"] == [{"type": "display", "data": {"text/plain": shown}}]


def test_websocket_runs_cells_with_display_events(launcher, api_key):
    url = launcher.url.replace("http://", "ws://") + "/execute/ws"
    headers = {"Authorization": f"Bearer {api_key}"}
    for code, want in (("n = 2", None), ("display(n)\nn + 1", "2")):
        with ws_connect(url, additional_headers=headers, open_timeout=10) as ws:
            ws.send(json.dumps({"type": "execute", "request": {"runtime": "python", "code": code},
                                "sessionId": "ws", "stateful": True}))
            events = []
            while not events or events[-1]["type"] != "exit":
                events.append(json.loads(ws.recv(timeout=30)))
        displays = [e["data"] for e in events if e["type"] == "display"]
        assert displays == ([] if want is None else [{"text/plain": want}])
        assert events[-1]["data"] == "0"
