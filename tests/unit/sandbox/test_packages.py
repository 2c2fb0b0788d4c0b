"""Package sets: their cache key, the per-tenant cache, and what a sandbox already has."""

from __future__ import annotations

import pytest

from sandbox import packages
from sandbox.errors import InstallError
from sandbox.protocol import Frame
from sandbox.spec import ExecutionSpec
from tests.unit.sandbox.conftest import fake_box


def spec(*names: str) -> ExecutionSpec:
    return ExecutionSpec.from_request({"runtime": "python", "code": "1", "installPackages": list(names)}, {})


def test_the_set_key_depends_on_runtime_and_packages(engine):
    key = packages.set_key(runtime="python", packages=["six"])
    assert key == packages.set_key(runtime="python", packages=["six"])
    assert key != packages.set_key(runtime="python", packages=["six", "attrs"])
    assert key != packages.set_key(runtime="node", packages=["six"])


def test_a_cached_set_is_unpacked_without_installing(engine, monkeypatch):
    key = packages.set_key(runtime="python", packages=["six"])
    cached = engine.package_cache / "alice" / f"{key}.tar.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"tarball")
    monkeypatch.setattr(packages, "_install", lambda **_: pytest.fail("installed although cached"))
    box = fake_box(script=[[Frame("r", b'{"ok": true}')]])
    assert packages.prepare_packages(box, tenant="alice", spec=spec("six"), publish=None) == "cache"
    assert box.transport.sent[0]["op"] == "put_tar" and key in box.installed
    # The same sandbox (a session) does not unpack it again.
    assert packages.prepare_packages(box, tenant="alice", spec=spec("six"), publish=None) == "cache"
    assert len(box.transport.sent) == 1


def test_one_tenants_cache_is_not_anothers(engine, monkeypatch):
    key = packages.set_key(runtime="python", packages=["six"])
    (engine.package_cache / "alice").mkdir(parents=True)
    (engine.package_cache / "alice" / f"{key}.tar.gz").write_bytes(b"alice's")
    installs: list[str] = []

    def install(*, tenant: str, **_: object) -> bytes:
        installs.append(tenant)
        return b"bob's"

    monkeypatch.setattr(packages, "_install", install)
    archive, from_cache = packages.package_archive(tenant="bob", runtime="python", packages=["six"])
    assert (archive, from_cache, installs) == (b"bob's", False, ["bob"])
    assert (engine.package_cache / "bob" / f"{key}.tar.gz").read_bytes() == b"bob's"


def test_an_unpack_the_sandbox_refuses_is_an_install_error(engine, monkeypatch):
    monkeypatch.setattr(packages, "_install", lambda **_: b"tar")
    box = fake_box(script=[[Frame("r", b'{"ok": false, "error": "No space left on device"}')]])
    with pytest.raises(InstallError, match="No space left"):
        packages.prepare_packages(box, tenant="alice", spec=spec("six"), publish=None)


def test_no_packages_means_nothing_to_prepare(engine):
    box = fake_box()
    assert packages.prepare_packages(box, tenant="alice", spec=spec(), publish=None) == ""
    assert box.transport.sent == []
