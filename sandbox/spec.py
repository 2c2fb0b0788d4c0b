"""Plain data passed between the API, the services, the worker and the engine.

No Django and no Docker here: the web side builds an ExecutionSpec from a
validated request (``from_request``) and stores it (``to_stored``); the worker
rebuilds it from the row (``from_stored``); the engine takes nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# The network modes a request may name (isol8's); "none" and "filtered" are served.
NETWORK_MODES = ("none", "filtered", "host")


@dataclass(frozen=True)
class Limits:
    """The effective limits of one run, defaults and tenant caps applied."""

    timeout_ms: int
    memory: int
    cpu: float
    pids: int
    max_output: int
    sandbox_size: int
    tmp_size: int
    network: str = "none"

    def container_profile(self) -> tuple[Any, ...]:
        """The part of the limits fixed when a container starts.

        Two runs can share a (reset) container only when these match; the
        timeout and output cap are per run.
        """
        return (self.memory, self.cpu, self.pids, self.sandbox_size, self.tmp_size, self.network)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Limits:
        return cls(**data)


@dataclass
class ExecutionSpec:
    """Everything needed to run one execution, as validated by the API."""

    runtime: str
    code: str = ""
    cmd: str = ""
    stdin: str = ""
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    output_paths: list[str] = field(default_factory=list)
    file_extension: str = ""
    workdir: str = ""
    setup_script: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    install_packages: list[str] = field(default_factory=list)
    tty: bool = False  # the code runs on a pseudo-terminal of the sandbox
    # Its stdin stays open for live input (GET /execute/ws) until an eof message.
    interactive: bool = False
    # network "filtered": the EgressPolicy (sandbox/netfilter.py) as JSON, the
    # request's filter and the tenant's policy resolved by the web side.
    egress: dict[str, Any] = field(default_factory=dict)
    log_network: bool = False  # isol8's logNetwork: the result carries networkLogs
    # A stateful session's run: ``code`` is a cell of the session's live interpreter.
    stateful: bool = False

    @classmethod
    def from_request(cls, request: dict[str, Any], options: dict[str, Any]) -> ExecutionSpec:
        """The spec of a validated request (isol8's ExecutionRequest) and its options."""
        return cls(
            runtime=request["runtime"],
            code=request.get("code", "") if request.get("code", "").strip() else "",
            cmd=request.get("cmd", "") if request.get("cmd", "").strip() else "",
            stdin=request.get("stdin", ""),
            env=request.get("env", {}),
            files=request.get("files", {}),
            output_paths=request.get("outputPaths", []),
            file_extension=request.get("fileExtension", ""),
            workdir=request.get("workdir", ""),
            setup_script=request.get("setupScript", ""),
            metadata=request.get("metadata", {}),
            secrets=options.get("secrets", {}),
            install_packages=request.get("installPackages", []),
            tty=bool(request.get("tty", False)),
        )

    @classmethod
    def from_stored(
        cls, *, runtime: str, code: str, cmd: str, stored: dict[str, Any], secrets: dict[str, str]
    ) -> ExecutionSpec:
        """The spec again, from what ``to_stored`` kept and the secrets kept apart."""
        return cls(
            runtime=runtime,
            code=code,
            cmd=cmd,
            stdin=stored.get("stdin", ""),
            env=stored.get("env", {}),
            files=stored.get("files", {}),
            output_paths=stored.get("outputPaths", []),
            file_extension=stored.get("fileExtension", ""),
            workdir=stored.get("workdir", ""),
            setup_script=stored.get("setupScript", ""),
            metadata=stored.get("metadata", {}),
            secrets=secrets,
            install_packages=stored.get("installPackages", []),
            tty=bool(stored.get("tty", False)),
            interactive=bool(stored.get("interactive", False)),
            egress=stored.get("egress", {}),
            log_network=bool(stored.get("logNetwork", False)),
            stateful=bool(stored.get("stateful", False)),
        )

    def to_stored(self) -> dict[str, Any]:
        """The request as the history keeps it: secret values are never stored, only their names."""
        data: dict[str, Any] = {
            "stdin": self.stdin,
            "env": self.env,
            "files": self.files,
            "outputPaths": self.output_paths,
            "fileExtension": self.file_extension,
            "workdir": self.workdir,
            "setupScript": self.setup_script,
            "metadata": self.metadata,
            "installPackages": self.install_packages,
            "secretNames": sorted(self.secrets),
            "tty": self.tty,
            "interactive": self.interactive,
            "egress": self.egress,
            "logNetwork": self.log_network,
            "stateful": self.stateful,
        }
        return {k: v for k, v in data.items() if v}


def truncation_marker(total: int, limit: int) -> str:
    """What ends a stream's output past maxOutputSize, live and in the result (isol8's wording)."""
    return f"\n\n--- OUTPUT TRUNCATED ({total} bytes, limit: {limit}) ---"


@dataclass
class RunResult:
    """What the worker learned from a run, before it becomes the API's result."""

    status: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_total: int = 0  # bytes the program wrote, including what was cut
    stderr_total: int = 0
    timed_out: bool = False
    duration_ms: int = 0
    error: str = ""
    error_code: str = ""
    files: dict[str, str] | None = None
    container_id: str = ""
    # Setup-script failure: the API answers 422 setup_failed with this message.
    setup_failed: bool = False
    package_source: str = ""
    # network "filtered": {"entries": [...], "totals": {...}} from the egress gateway.
    network_log: dict[str, Any] | None = None
    # A stateful cell: {"value", "outputs", "exception", "stateLost"} (CellResult.to_json).
    cell: dict[str, Any] | None = None
