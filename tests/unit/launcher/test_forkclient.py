"""forkclient.py: which runs the python fork server may serve, and a run forked from a real one.

The fork server here is this host's python, started by the test as this
process's user (root: its runs "drop" to uid/gid 0, only in their own processes).
"""

from __future__ import annotations

import base64
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from isol8_launcher.forkclient import ForkServer, startup_env
from isol8_launcher.procs import CodeUser
from isol8_launcher.run import BASE_ENV, Runner

from tests.unit.launcher.support import PYTHON, end_of_run, payloads

STARTED_PYTHON = PYTHON[:-1]  # without its -c


def test_startup_env_keeps_only_what_an_interpreter_reads_when_it_starts():
    env = {
        "PYTHONPATH": "/lib", "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C", "LANG": "C.UTF-8", "LANGUAGE": "en",
        "TZ": "UTC", "HOME": "/sandbox", "PATH": "/bin", "USER": "sandbox", "TMPDIR": "/tmp", "API_KEY": "secret",
        "MYPYTHONPATH": "/x", "lang": "lower",
    }
    assert startup_env(env) == {
        "PYTHONPATH": "/lib", "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C", "LANG": "C.UTF-8", "LANGUAGE": "en",
        "TZ": "UTC", "HOME": "/sandbox", "PATH": "/bin",
    }


@pytest.fixture
def forkserver() -> Iterator[ForkServer]:
    server = ForkServer([sys.executable, "-I", "-S"], dict(BASE_ENV), CodeUser(os.getuid(), os.getgid()))
    yield server
    server.dismiss()


@pytest.fixture
def runner(frames, control, programs, roots, forkserver) -> Runner:
    return Runner(
        writer=frames.writer, control_fd=control[0], pending=[], spawn=programs.spawn, kill=programs.kill,
        as_code_user=lambda fn: fn(), roots=roots,
        forkserver_for=lambda env: forkserver if forkserver.serves(env) else None,
    )


def python_run(roots, source: str, **fields):
    path = f"{roots[0]}/main.py"
    return {
        "op": "run", "argv": ["python3", path], "files": [[path, base64.b64encode(source.encode()).decode()]],
        "timeoutMs": 10000, "forkServer": True, **fields,
    }


def test_the_fork_server_serves_a_run_whose_startup_env_is_its_own(forkserver):
    assert forkserver.serves({**BASE_ENV, "GREETING": "hi"})
    assert not forkserver.serves({**BASE_ENV, "PYTHONPATH": "/elsewhere"})
    assert not forkserver.serves({**BASE_ENV, "LANG": "de_DE.UTF-8"})


def test_a_dead_fork_server_serves_nothing(forkserver):
    os.kill(forkserver.pid, signal.SIGKILL)
    os.waitid(os.P_PIDFD, forkserver.pidfd, os.WEXITED | os.WNOWAIT)
    assert not forkserver.alive()
    assert not forkserver.serves(dict(BASE_ENV))


def test_a_python_run_is_forked_from_the_fork_server(runner, frames, programs, roots):
    source = "import sys\nprint('forked', sys.argv)\nsys.exit(3)\n"
    runner.run_request(python_run(roots, source))
    got = frames.frames()
    outcome = end_of_run(got)
    assert outcome["forkServer"] is True and outcome["exitCode"] == 3
    assert payloads(got, "o") == f"forked {[f'{roots[0]}/main.py']}\n".encode()
    assert programs.started == []  # nothing spawned: the run wrote its program file itself
    assert Path(roots[0], "main.py").read_text() == source


def test_a_forked_runs_traceback_shows_only_the_users_frames(runner, frames, roots):
    runner.run_request(python_run(roots, "def f():\n    raise ValueError('boom')\nf()\n"))
    got = frames.frames()
    assert end_of_run(got)["exitCode"] == 1
    err = payloads(got, "e").decode()
    assert err.startswith("Traceback") and "ValueError: boom" in err
    assert "forkserver.py" not in err


def test_a_run_with_another_startup_env_is_started_instead(runner, frames, programs, roots):
    runner.run_request(python_run(roots, "print('x')", argv=[*STARTED_PYTHON, f"{roots[0]}/main.py"],
                                  env={"PYTHONPATH": "/elsewhere"}))
    got = frames.frames()
    assert end_of_run(got)["forkServer"] is False and payloads(got, "o") == b"x\n"
    assert len(programs.started) == 1


def test_a_run_that_does_not_ask_for_the_fork_server_is_started(runner, frames, programs, roots):
    runner.run_request(python_run(roots, "print('x')", argv=[*STARTED_PYTHON, f"{roots[0]}/main.py"],
                                  forkServer=False))
    got = frames.frames()
    assert end_of_run(got)["forkServer"] is False and payloads(got, "o") == b"x\n"
    assert len(programs.started) == 1
