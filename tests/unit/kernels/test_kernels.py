"""The stateful sessions' interpreters (images/common/isol8_kernels/) run on the host, as the launcher runs them.

Each kernel gets its cells on fd 3 and writes its events to fd 4; stdout and
stderr go to files read after each ``done`` (the kernel flushes before it).
The kernels are this machine's python3, node and bash: no Docker, no launcher.
The launcher's side of the protocol is tested in tests/unit/launcher/test_kernel.py,
the whole path in tests/stack/sessions_app/test_stateful.py.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

KERNELS = Path(__file__).resolve().parents[3] / "images" / "common" / "isol8_kernels"
ARGV = {
    "python": [sys.executable, "-I", str(KERNELS / "python_kernel.py")],
    "node": ["node", str(KERNELS / "node_kernel.js")],
    "bash": ["bash", str(KERNELS / "bash_kernel.sh")],
}


class Driver:
    """One kernel process, its cell pipe, its event pipe, its output files."""

    def __init__(self, runtime: str, workdir: Path) -> None:
        self.runtime = runtime
        cells_r, self.cells_w = os.pipe()
        self.events_r, events_w = os.pipe()
        acks_r, self.acks_w = os.pipe()
        self.out = open(workdir / "stdout", "w+b")  # noqa: SIM115 - closed in stop()
        self.err = open(workdir / "stderr", "w+b")  # noqa: SIM115

        def place_fds() -> None:
            os.dup2(cells_r, 3)
            os.dup2(events_w, 4)
            os.dup2(acks_r, 5)

        self.proc = subprocess.Popen(
            ARGV[runtime], stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err, cwd=workdir,
            preexec_fn=place_fds, pass_fds=(3, 4, 5), start_new_session=True,
            env={"PATH": os.environ["PATH"], "HOME": str(workdir), "LANG": "C.UTF-8"},
        )
        os.close(cells_r)
        os.close(events_w)
        os.close(acks_r)
        self.buffer = b""
        self.ids = 0
        assert self.event(10)["type"] == "ready"

    def event(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.events_r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("no event from the kernel")
            chunk = os.read(self.events_r, 1 << 20)
            if not chunk:
                raise EOFError("the kernel closed its events")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return dict(json.loads(line))

    def send(self, code: str, env: dict[str, str] | None = None) -> None:
        self.ids += 1
        if self.runtime == "bash":
            exports = "".join(f"local -x {k}={shlex.quote(v)}\n" for k, v in (env or {}).items())
            data = (exports + code).encode() + b"\0"
        else:
            data = (json.dumps({"id": self.ids, "code": code, "env": env or {}}) + "\n").encode()
        os.write(self.cells_w, data)

    def cell(self, code: str, *, env: dict[str, str] | None = None, timeout: float = 20,
             interrupt_after: float | None = None) -> tuple[dict[str, Any], list[dict[str, Any]], str, str]:
        """Run a cell: its done event, its displays, its stdout and stderr."""
        start_out, start_err = self.out.tell(), self.err.tell()
        self.out.seek(0, os.SEEK_END)
        self.err.seek(0, os.SEEK_END)
        start_out, start_err = self.out.tell(), self.err.tell()
        self.send(code, env)
        if interrupt_after is not None:
            time.sleep(interrupt_after)
            os.killpg(self.proc.pid, signal.SIGINT)
        displays = []
        while True:
            event = self.event(timeout)
            if event["type"] == "done":
                break
            if event.get("ack"):
                os.write(self.acks_w, b"\n")  # as the launcher does once it read the output before it
            displays.append(event)
        return event, displays, self._since(self.out, start_out), self._since(self.err, start_err)

    @staticmethod
    def _since(file: Any, offset: int) -> str:
        file.seek(offset)
        return str(file.read().decode())

    def stop(self) -> int:
        if self.cells_w < 0:
            return int(self.proc.wait())
        os.close(self.cells_w)
        self.cells_w = -1
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        os.close(self.events_r)
        os.close(self.acks_w)
        self.out.close()
        self.err.close()
        return code


@pytest.fixture
def kernel(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driver]:
    runtime = request.param
    if shutil.which(ARGV[runtime][0]) is None:
        pytest.skip(f"{ARGV[runtime][0]} is not installed on this machine")
    driver = Driver(runtime, tmp_path)
    yield driver
    driver.stop()


def python(fn: Any) -> Any:
    return pytest.mark.parametrize("kernel", ["python"], indirect=True)(fn)


def node(fn: Any) -> Any:
    return pytest.mark.parametrize("kernel", ["node"], indirect=True)(fn)


def bash(fn: Any) -> Any:
    return pytest.mark.parametrize("kernel", ["bash"], indirect=True)(fn)


# -------------------------------------------------------------------- python


@python
def test_python_keeps_variables_and_gives_the_trailing_value(kernel: Driver) -> None:
    done, _, _, _ = kernel.cell("x = 42")
    assert done["status"] == "ok" and done["value"] is None
    done, _, out, _ = kernel.cell("print('hi')\nx + 1")
    assert out == "hi\n"
    assert done["value"] == {"text/plain": "43"} and done["id"] == 2


@python
def test_python_imports_and_functions_survive_and_a_semicolon_hides_the_value(kernel: Driver) -> None:
    kernel.cell("import math\ndef area(r):\n    return math.pi * r * r")
    done, _, _, _ = kernel.cell("round(area(2), 3)")
    assert done["value"]["text/plain"] == "12.566"
    done, _, _, _ = kernel.cell("area(1);")
    assert done["value"] is None


@python
def test_python_exception_is_structured_with_the_cells_frames_only(kernel: Driver) -> None:
    kernel.cell("def f():\n    return 1 / 0")
    done, _, _, err = kernel.cell("y = 5\nf()")
    assert done["status"] == "error" and done["value"] is None
    exc = done["exception"]
    assert exc["ename"] == "ZeroDivisionError" and exc["evalue"] == "division by zero"
    text = "".join(exc["traceback"])
    assert '"<cell 2>", line 2' in text and '"<cell 1>", line 2, in f' in text and "return 1 / 0" in text
    assert "python_kernel" not in text and "asyncio" not in text
    assert err == text
    assert kernel.cell("y")[0]["value"] == {"text/plain": "5"}  # what ran before the error stays


@python
def test_python_syntax_error_names_the_cell(kernel: Driver) -> None:
    done, _, _, _ = kernel.cell("def (")
    assert done["exception"]["ename"] == "SyntaxError"
    assert "<cell 1>" in "".join(done["exception"]["traceback"])


@python
def test_python_display_protocol_and_display_calls_in_order(kernel: Driver) -> None:
    kernel.cell(
        "class Rich:\n"
        "    def _repr_html_(self): return '<b>rich</b>'\n"
        "    def _repr_png_(self): return b'\\x89PNG'\n"
        "    def _repr_json_(self): return {'a': 1}\n"
        "    def __repr__(self): return 'Rich()'\n"
    )
    done, displays, out, _ = kernel.cell("print('before')\ndisplay(Rich(), 'two')\nRich()")
    assert out == "before\n"
    assert [d["data"]["text/plain"] for d in displays] == ["Rich()", "'two'"]
    value = done["value"]
    assert value["text/html"] == "<b>rich</b>" and value["application/json"] == {"a": 1}
    assert base64.b64decode(value["image/png"]) == b"\x89PNG"


@python
def test_python_top_level_await(kernel: Driver) -> None:
    kernel.cell("import asyncio\nasync def twice(v):\n    await asyncio.sleep(0.01)\n    return 2 * v")
    done, _, _, _ = kernel.cell("r = await twice(21)\nr")
    assert done["value"] == {"text/plain": "42"}
    done, _, _, _ = kernel.cell("await twice(1)")
    assert done["value"] == {"text/plain": "2"}


@python
def test_python_interrupt_stops_the_cell_and_keeps_the_state(kernel: Driver) -> None:
    kernel.cell("kept = 'yes'")
    done, _, _, _ = kernel.cell("while True:\n    pass", interrupt_after=0.5)
    assert done["status"] == "error" and done["exception"]["ename"] == "KeyboardInterrupt"
    os.killpg(kernel.proc.pid, signal.SIGINT)  # between cells: ignored
    time.sleep(0.2)
    assert kernel.cell("kept")[0]["value"] == {"text/plain": "'yes'"}


@python
def test_python_exit_in_a_cell_keeps_the_interpreter_env_reaches_it(kernel: Driver) -> None:
    assert kernel.cell("import sys\nsys.exit(0)")[0]["status"] == "ok"
    assert kernel.cell("sys.exit(3)")[0]["exception"]["ename"] == "SystemExit"
    done, _, _, _ = kernel.cell("import os\nos.environ['GREETING']", env={"GREETING": "hej"})
    assert done["value"] == {"text/plain": "'hej'"}
    assert kernel.cell("os.environ.get('GREETING')")[0]["value"] is None  # the request's, not the session's
    kernel.cell("os.environ['MINE'] = 'kept'")
    kernel.cell("os.environ['MINE']", env={"MINE": "lent"})
    assert kernel.cell("os.environ['MINE']")[0]["value"] == {"text/plain": "'kept'"}
    assert kernel.cell("__name__")[0]["value"] == {"text/plain": "'__main__'"}


@python
def test_python_the_events_pipe_is_not_inherited(kernel: Driver) -> None:
    pipes = "import os\n[n for n in (3, 4) if os.readlink(f'/proc/self/fd/{n}').startswith('pipe:')]"
    assert kernel.cell(pipes)[0]["value"] == {"text/plain": "[]"}  # 3 and 4 are the asyncio loop's now
    probe = "import os; print([n for n in range(3, 256) if os.path.exists(f'/proc/self/fd/{n}')])"
    _, _, out, _ = kernel.cell(f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {probe!r}])")
    assert out == "[]\n"


@python
def test_python_ends_when_the_cell_pipe_closes(kernel: Driver) -> None:
    kernel.cell("1")
    assert kernel.stop() == 0


# ---------------------------------------------------------------------- node


@node
def test_node_let_const_persist_and_top_level_await(kernel: Driver) -> None:
    assert kernel.cell("let a = 1")[0]["value"] is None
    assert kernel.cell("a + 1")[0]["value"] == {"text/plain": "2"}
    done, _, _, _ = kernel.cell("const b = await new Promise((r) => setTimeout(() => r(40), 10));\nb + 2")
    assert done["value"] == {"text/plain": "42"}
    assert kernel.cell("b")[0]["value"] == {"text/plain": "40"}


@node
def test_node_output_value_and_display(kernel: Driver) -> None:
    done, displays, out, _ = kernel.cell(
        "console.log('hello');\ndisplay({x: 1});\ndisplay({'text/html': '<i>i</i>'}, {raw: true});\n"
        "({name: 'n', list: [1, 2]})"
    )
    assert out == "hello\n"
    assert [d["data"] for d in displays] == [{"text/plain": "{ x: 1 }"}, {"text/html": "<i>i</i>"}]
    assert done["value"] == {"text/plain": "{ name: 'n', list: [ 1, 2 ] }"}
    assert kernel.cell("require('path').join('a', 'b')")[0]["value"] == {"text/plain": "'a/b'"}


@node
def test_node_exceptions_are_structured_sync_and_async(kernel: Driver) -> None:
    done, _, _, err = kernel.cell("function f() { throw new TypeError('bad') }\nf()")
    exc = done["exception"]
    assert done["status"] == "error" and exc["ename"] == "TypeError" and exc["evalue"] == "bad"
    assert "<cell 1>" in "".join(exc["traceback"]) and "node:" not in "".join(exc["traceback"])
    assert "TypeError: bad" in err
    done, _, _, _ = kernel.cell("await Promise.reject(new RangeError('late'))")
    assert done["exception"]["ename"] == "RangeError"
    assert kernel.cell("throw 5")[0]["exception"]["evalue"] == "5"
    assert kernel.cell("function (")[0]["exception"]["ename"] == "SyntaxError"
    assert kernel.cell("1 + 1")[0]["value"] == {"text/plain": "2"}


@node
def test_node_interrupt_breaks_a_loop_and_keeps_the_state(kernel: Driver) -> None:
    kernel.cell("var kept = 'yes'")
    done, _, _, _ = kernel.cell("while (true) {}", interrupt_after=0.5)
    assert done["status"] == "error" and "interrupted" in done["exception"]["evalue"]
    os.killpg(kernel.proc.pid, signal.SIGINT)  # between cells: ignored
    time.sleep(0.2)
    assert kernel.cell("kept")[0]["value"] == {"text/plain": "'yes'"}
    done, _, _, _ = kernel.cell("await new Promise(() => {})", interrupt_after=0.3)
    assert done["status"] == "error"
    assert kernel.cell("kept")[0]["value"] == {"text/plain": "'yes'"}


@node
def test_node_env_reaches_process_env(kernel: Driver) -> None:
    done, _, _, _ = kernel.cell("process.env.GREETING", env={"GREETING": "hej"})
    assert done["value"] == {"text/plain": "'hej'"}
    assert kernel.cell("process.env.GREETING")[0]["value"] is None  # the request's, not the session's


# ---------------------------------------------------------------------- bash


@bash
def test_bash_keeps_cwd_variables_and_functions(kernel: Driver) -> None:
    kernel.cell("cd /tmp; export V=1; W=2; greet() { echo \"hi $1\"; }")
    done, _, out, _ = kernel.cell('pwd; echo "$V$W"; greet you; bash -c \'echo "child $V"\'')
    assert done["status"] == "ok" and done["exitCode"] == 0
    assert out == "/tmp\n12\nhi you\nchild 1\n"


@bash
def test_bash_exit_code_and_env(kernel: Driver) -> None:
    done, _, _, err = kernel.cell("echo oops >&2; false")
    assert done["status"] == "error" and done["exitCode"] == 1 and err == "oops\n"
    done, _, out, _ = kernel.cell('echo "$GREETING"; bash -c \'echo "child $GREETING"\'', env={"GREETING": "it's"})
    assert out == "it's\nchild it's\n"
    assert kernel.cell('echo "[${GREETING-unset}]"')[2] == "[unset]\n"  # the request's, not the session's


@bash
def test_bash_interrupt_returns_from_the_cell(kernel: Driver) -> None:
    kernel.cell("kept=yes")
    done, _, out, _ = kernel.cell("while true; do sleep 0.05; done; echo after", interrupt_after=0.5)
    assert done["exitCode"] == 130 and "after" not in out
    done, _, out, _ = kernel.cell("while :; do :; done", interrupt_after=0.3)
    assert done["exitCode"] == 130
    assert kernel.cell('echo "$kept"')[2] == "yes\n"
