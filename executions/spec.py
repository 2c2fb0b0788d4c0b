"""Plain data passed between the API, the services and the worker.

No Django models here: the worker's hot path builds these from one row and the
sandbox layer takes nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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

    def stored_request(self) -> dict[str, Any]:
        """The request as the history keeps it: secret values are never stored."""
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
        }
        return {k: v for k, v in data.items() if v}


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
