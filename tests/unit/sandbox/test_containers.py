"""The hardening baseline every container gets, and the code uid each sandbox has to itself."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from sandbox import containers
from sandbox.containers import UidAllocator, hardened_config
from sandbox.errors import SandboxError
from tests.unit.sandbox.conftest import LIMITS


def config(mode: str = "launcher", **kwargs: Any) -> dict:
    return hardened_config(runtime="python", limits=LIMITS, labels={"isol8.tenant": "t1"}, mode=mode, uid=3_000_005,
                           **kwargs)


@pytest.mark.parametrize("mode", ["launcher", "exec"])
def test_every_container_gets_the_full_baseline(engine, mode):
    c = config(mode)
    assert c["cap_drop"] == ["ALL"] and c["read_only"] is True and c["network_mode"] == "none"
    assert c["security_opt"][0] == "no-new-privileges"
    assert json.loads(c["security_opt"][1].removeprefix("seccomp=")) == json.loads(
        (engine.images_dir / "seccomp.json").read_text())
    assert (c["mem_limit"], c["memswap_limit"], c["pids_limit"]) == (LIMITS.memory, LIMITS.memory, LIMITS.pids)
    assert c["nano_cpus"] == int(LIMITS.cpu * 1e9)
    assert (c["ipc_mode"], c["cgroupns"], c["init"]) == ("private", "private", False)
    assert {u.name for u in c["ulimits"]} == {"nofile", "fsize", "core", "msgqueue"}
    assert "noexec" in c["tmpfs"]["/tmp"] and f"size={LIMITS.tmp_size}" in c["tmpfs"]["/tmp"]
    assert "uid=3000005" in c["tmpfs"]["/sandbox"] and "nosuid" in c["tmpfs"]["/sandbox"]
    assert c["labels"] == {"isol8.managed": "true", "isol8.host": "unit-host", "isol8.uid": "3000005",
                           "isol8.tenant": "t1", }
    assert c["environment"] == {} and c["image"].startswith("isol8-unit-python:")


def test_the_launcher_runs_as_root_with_only_the_capabilities_it_needs(engine):
    c = config("launcher")
    assert c["user"] == "0:0" and c["cap_add"] == ["SETUID", "SETGID", "SETPCAP"]
    assert c["command"][:2] == ["/usr/bin/tini", "--"] and c["command"][-3:] == ["serve", "--uid", "3000005"]


def test_the_exec_fallback_keeps_alive_as_nobody_without_capabilities(engine):
    c = config("exec")
    assert c["user"] == "65534:65534" and "cap_add" not in c and c["command"][-3:] == ["keepalive", "--uid", "3000005"]


def test_only_installers_get_the_egress_network(engine):
    assert config(egress=True)["network_mode"] == containers.EGRESS_NETWORK


def test_uids_are_unique_per_live_sandbox_and_run_out_clearly():
    allocator = UidAllocator(5000, 3)
    got = {allocator.allocate() for _ in range(3)}
    assert got == {5000, 5001, 5002}
    with pytest.raises(SandboxError, match="no free sandbox uid"):
        allocator.allocate()
    allocator.release(5001)
    assert allocator.allocate() == 5001


def test_uids_carried_by_live_containers_are_never_handed_out_again():
    allocator = UidAllocator(5000, 2)
    allocator.sync({5000})
    assert allocator.allocate() == 5001


def test_a_uid_range_overlapping_a_host_account_is_refused(tmp_path: Path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\nbob:x:5001:5001::/home/bob:/bin/sh\n")
    with pytest.raises(SandboxError, match="bob"):
        UidAllocator(5000, 10).check_host_accounts(passwd)
    UidAllocator(6000, 10).check_host_accounts(passwd)  # no overlap: fine


class FakeAttach:
    """Stands in for LauncherTransport: no socket."""

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id

    def close(self) -> None:
        pass


@pytest.fixture
def fake_engine(engine, monkeypatch):
    """Docker calls recorded; start_container notes what the sweep would spare at that moment."""
    calls: dict[str, Any] = {"removed": [], "held_at_start": None, "start_fails": False}

    def create(config: dict[str, Any]) -> str:
        calls["labels"] = config["labels"]
        calls["creating_during_create"] = containers.being_created(config["labels"])
        return "fresh-1"

    def start(container_id: str) -> None:
        calls["held_at_start"] = containers.held_container_ids() | (
            {container_id} if containers.being_created(calls["labels"]) else set())
        if calls["start_fails"]:
            raise SandboxError("the Docker engine refused to start a container")

    monkeypatch.setattr(containers.dockerapi, "create_container", create)
    monkeypatch.setattr(containers.dockerapi, "start_container", start)
    monkeypatch.setattr(containers.dockerapi, "remove_container", calls["removed"].append)
    monkeypatch.setattr(containers, "LauncherTransport", FakeAttach)
    return calls


def test_a_container_is_held_from_its_creation_until_destroyed(fake_engine):
    box = containers.create_sandbox(runtime="python", limits=LIMITS, labels={})
    assert fake_engine["creating_during_create"]  # Docker may list it before create returns: spared by its label
    assert "fresh-1" in fake_engine["held_at_start"]  # created, not started: already spared
    assert not containers.being_created(fake_engine["labels"])
    assert "fresh-1" in containers.held_container_ids()
    box.destroy()
    assert fake_engine["removed"] == ["fresh-1"] and "fresh-1" not in containers.held_container_ids()


def test_a_sandbox_dropped_without_destroy_is_an_orphan_again(fake_engine):
    import gc

    box = containers.create_sandbox(runtime="python", limits=LIMITS, labels={})
    del box
    gc.collect()
    assert "fresh-1" not in containers.held_container_ids()


def test_a_container_that_fails_to_start_is_removed_and_not_held(fake_engine):
    fake_engine["start_fails"] = True
    with pytest.raises(SandboxError):
        containers.create_sandbox(runtime="python", limits=LIMITS, labels={})
    assert fake_engine["removed"] == ["fresh-1"] and "fresh-1" not in containers.held_container_ids()


def test_cpu_readings_of_many_containers_are_asked_for_at_once(monkeypatch):
    # Docker 20.10 answers each stats request after about a second: session metering asks for
    # all of a host's containers together. Four readings that each wait for the other three
    # only finish if they are in flight at the same time.
    from sandbox import dockerapi

    together = threading.Barrier(4, timeout=10)

    def reading(container_id: str) -> int | None:
        together.wait()
        return None if container_id == "gone" else len(container_id)

    monkeypatch.setattr(dockerapi, "container_cpu_ns", reading)
    assert containers.containers_cpu_ns(["a", "bb", "ccc", "gone"]) == {"a": 1, "bb": 2, "ccc": 3, "gone": None}
    assert containers.containers_cpu_ns([]) == {}
