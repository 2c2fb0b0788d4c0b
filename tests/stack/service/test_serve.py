"""`manage.py serve` and the config file (issue 5, points 1 and 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from sandbox import containers
from tests.conftest import ROOT, free_port, wait_healthy

pytestmark = pytest.mark.stack

SERVE_KEY = "serve-key-0c4d2e7a9b13f85"


def descendants_of(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        kids = children_of(todo.pop())
        found |= kids
        todo.extend(kids)
    return found


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_serve_starts_clean_and_stops_cleanly(stack, transactional_db, tmp_path):
    host = f"serve-{os.getpid()}"
    port = free_port()
    # A cluster of its own: database, run queue and worker host (the stack's reaper
    # would otherwise see this worker as foreign and fail its runs).
    env = {**stack.env, "ISOL8_WORKER_HOST": host, "ISOL8_RUN_QUEUE": f"isol8.run.{host}", "PORT": "",
           "ISOL8_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/serve.sqlite3"}
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), "--key", SERVE_KEY],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout=60, proc=proc)
        response = httpx.post(f"{url}/execute", headers={"Authorization": f"Bearer {SERVE_KEY}"},
                              json={"request": {"runtime": "python", "code": "print(1)"}}, timeout=60)
        assert response.json()["stdout"] == "1", response.text
        assert len(children_of(proc.pid)) == 3  # web, worker, beat
        children = descendants_of(proc.pid)  # uvicorn's own worker processes too
        assert containers.list_managed(host=host)  # the worker's pool
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, output
    assert "listening on http://127.0.0.1:" in output and "Master key: the value of --key" in output
    assert SERVE_KEY not in output  # the key is never written to a log
    assert not [pid for pid in children if alive(pid)]
    assert containers.list_managed(host=host) == []


def test_config_with_an_unknown_key_refuses_to_start_naming_it(tmp_path, stack):
    config = tmp_path / "isol8.config.json"
    config.write_text(json.dumps({"maxConcurrent": 4, "defaults": {"timeoutMs": 1000, "memroyLimit": "1g"}}))
    result = subprocess.run(
        [sys.executable, "manage.py", "serve", "--config", str(config), "--key", SERVE_KEY],
        cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "defaults.memroyLimit" in result.stderr
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env={**stack.env, "ISOL8_CONFIG": str(config)},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "defaults.memroyLimit" in result.stderr
