"""Stateful sessions, the worker's side: the interpreter's configuration, a cell's request and its result.

A stateful session's container keeps one interpreter (the launcher's
kernel.py starts it, from /opt/isol8/kernels/); each run of the session is a
*cell* in it. The launcher answers a cell like a run (output frames, then
``x``) plus ``d`` frames, one per display; ``x`` carries the value of the
cell's trailing expression and its exception. This module builds the
requests and turns what came back into the result's ``value``, ``outputs``,
``exception`` and ``stateLost``, with the run's secrets masked in them.
"""

from __future__ import annotations

import base64
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

from sandbox.config import current
from sandbox.gateway import proxy_environment
from sandbox.runtimes import BASE_ENV, RUNTIMES, SANDBOX, STATEFUL_RUNTIMES, SYSTEM_TRUST_ENV
from sandbox.spec import ExecutionSpec, Limits

__all__ = ["STATEFUL_RUNTIMES", "CellOutputs", "build_cell_request", "kernel_request", "mask"]
# A cell past its deadline gets SIGINT; this long later it is killed (stateLost).
INTERRUPT_GRACE_MS = 2000


def kernel_environment(runtime: str, limits: Limits) -> dict[str, str]:
    """The interpreter's environment: what every program of the runtime gets (no secrets: cells bring those)."""
    env = dict(BASE_ENV)
    env.update(RUNTIMES[runtime].env)
    if limits.network == "filtered":
        env.update(proxy_environment())
        env.update(SYSTEM_TRUST_ENV)
    return env


def kernel_request(runtime: str, limits: Limits) -> dict[str, Any]:
    """The launcher's ``kernel`` request: this sandbox keeps a live interpreter of ``runtime``."""
    return {"op": "kernel", "runtime": runtime, "env": kernel_environment(runtime, limits)}


def build_cell_request(spec: ExecutionSpec, limits: Limits) -> dict[str, Any]:
    """The launcher's ``cell`` request: the code, its files and variables, the run's limits."""
    files = []
    for path, text in spec.files.items():
        full = path if path.startswith("/") else posixpath.join(SANDBOX, path)
        files.append([full, base64.b64encode(text.encode()).decode()])
    env = dict(spec.secrets)
    env.update(spec.env)
    return {
        "op": "cell",
        "code": spec.code,
        "env": env,
        "files": files,
        "timeoutMs": limits.timeout_ms,
        "interruptGraceMs": INTERRUPT_GRACE_MS,
        "maxOutput": limits.max_output,
        "maxDisplayBytes": current().display_max_bytes,
        "outputPaths": [p if p.startswith("/") else posixpath.join(SANDBOX, p) for p in spec.output_paths],
        "maxFileBytes": current().file_max_bytes,
        "maxOutputFilesBytes": current().output_files_max,
    }


def mask(value: Any, secrets: list[str]) -> Any:
    """``value`` (JSON) with every secret in its strings replaced by ``***``."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in sorted(secrets, key=len, reverse=True):
            if secret:
                value = value.replace(secret, "***")
        return value
    if isinstance(value, list):
        return [mask(item, secrets) for item in value]
    if isinstance(value, dict):
        return {key: mask(item, secrets) for key, item in value.items()}
    return value


def bundle(data: Any) -> dict[str, Any] | None:
    """A MIME bundle as the kernel sent it, kept only if it is one: string keys with a "/"."""
    if not isinstance(data, dict):
        return None
    kept = {key: item for key, item in data.items() if isinstance(key, str) and "/" in key}
    return kept or None


@dataclass
class CellOutputs:
    """What a cell displayed, in order (the ``d`` frames), and how it ended."""

    secrets: list[str] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def display(self, payload: bytes) -> dict[str, Any] | None:
        """One ``d`` frame; the (masked) bundle to publish as a ``display`` event, or None if it is not one."""
        try:
            data = bundle(json.loads(payload))
        except ValueError:
            return None
        if data is None:
            return None
        data = mask(data, self.secrets)
        self.outputs.append({"type": "display", "data": data})
        return data

    def result(self, outcome: dict[str, Any]) -> dict[str, Any]:
        """The result's stateful part: value, outputs, exception, stateLost (displays dropped past the cap)."""
        exception = outcome.get("exception")
        if isinstance(exception, dict):
            exception = {
                "ename": str(exception.get("ename", "Error")),
                "evalue": str(exception.get("evalue", "")),
                "traceback": [str(line) for line in exception.get("traceback") or [] if isinstance(line, str)],
            }
        else:
            exception = None
        cell = {
            "value": mask(bundle(outcome.get("value")), self.secrets),
            "outputs": self.outputs,
            "exception": mask(exception, self.secrets),
            "stateLost": bool(outcome.get("stateLost")),
        }
        if outcome.get("displaysDropped"):
            cell["displaysDropped"] = int(outcome["displaysDropped"])
        return cell
