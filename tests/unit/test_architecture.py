"""The layout's rules (style.md, issue 16): what the web process loads, and the import contracts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# What only the worker may load: the Docker SDK, the worker, and the engine's machinery.
WORKER_ONLY = ("docker", "worker.daemon", "worker.runs", "worker.sessions", "worker.tasks", "sandbox.dockerapi",
               "sandbox.containers", "sandbox.pool", "sandbox.run", "sandbox.packages", "sandbox.images",
               "sandbox.egress", "sandbox.protocol")

WEB_PROCESS = """
import django, sys
django.setup()
import isol8_site.urls, isol8_site.asgi, isol8_site.celery
from django.test import Client
Client().get("/health")  # a request through the whole middleware chain and a view
print(" ".join(sorted(m for m in sys.modules if m in {names!r} or m.startswith("docker."))))
"""


def test_the_web_process_loads_neither_docker_nor_the_worker():
    result = subprocess.run(
        [sys.executable, "-c", WEB_PROCESS.format(names=set(WORKER_ONLY))], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={"DJANGO_SETTINGS_MODULE": "isol8_site.settings", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_import_contracts_hold():
    """.importlinter: the engine is a library, the web never imports the worker, layers point one way, no cycles."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
