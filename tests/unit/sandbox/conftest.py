"""The engine configured for unit tests: its files in a temporary directory, no Docker."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from sandbox import config, containers
from sandbox.config import SandboxConfig
from sandbox.containers import Sandbox
from sandbox.protocol import Frame
from sandbox.spec import Limits

ROOT = Path(__file__).resolve().parents[3]

LIMITS = Limits(
    timeout_ms=5000, memory=256 * 1024**2, cpu=0.5, pids=64, max_output=1024, sandbox_size=64 * 1024**2,
    tmp_size=32 * 1024**2,
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[SandboxConfig]:
    """A SandboxConfig whose images folder is a copy of the repository's (tests may change it)."""
    images = tmp_path / "images"
    shutil.copytree(ROOT / "images", images)
    cfg = SandboxConfig(
        host="unit-host", mode="launcher", runtimes=("python", "bash"), default_limits=LIMITS,
        images_dir=images, base_image="isol8-base:test", image_prefix="isol8-unit", debian_mirror="http://mirror",
        extra_ca_dir=tmp_path / "no-ca", package_cache=tmp_path / "packages", uid_base=3_000_000, uid_count=16,
    )
    config.configure(cfg)
    containers.uids.cache_clear()
    containers.seccomp_profile.cache_clear()
    yield cfg
    containers.uids.cache_clear()
    containers.seccomp_profile.cache_clear()


def reconfigure(cfg: SandboxConfig, **changes: Any) -> SandboxConfig:
    new = replace(cfg, **changes)
    config.configure(new)
    return new


@dataclass
class FakeTransport:
    """Answers each request with scripted frames and records what was sent."""

    script: list[list[Frame]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    controls: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    def call(
        self,
        request: dict[str, Any],
        deadline: float,
        until_nonce: str | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> Iterator[Frame]:
        self.sent.append(request)
        if on_sent is not None:
            on_sent()
        frames = self.script.pop(0) if self.script else [Frame("r", b'{"ok": true, "clean": true}')]
        for frame in frames:
            if isinstance(frame, Exception):
                raise frame
            yield frame

    def send_control(self, request: dict[str, Any]) -> None:
        self.controls.append(request)

    def close(self) -> None:
        self.closed = True


def fake_box(*, runtime: str = "python", limits: Limits = LIMITS, tenant: str = "", container_id: str = "c1",
             script: list[list[Frame]] | None = None) -> Sandbox:
    return Sandbox(
        container_id=container_id, runtime=runtime, limits=limits, mode="launcher",
        transport=FakeTransport(script=script or []),  # type: ignore[arg-type]
        uid=3_000_001, tenant=tenant,
    )
