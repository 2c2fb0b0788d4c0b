"""The warm pool's ownership rules (sandbox.md rules 1-3), with containers faked."""

from __future__ import annotations

import itertools

import pytest

from sandbox import pool as pool_module
from sandbox.containers import Sandbox
from sandbox.pool import SandboxPool
from sandbox.protocol import Frame
from sandbox.spec import Limits
from tests.unit.sandbox.conftest import LIMITS, fake_box

ids = itertools.count(1)


@pytest.fixture
def pool(engine, monkeypatch):
    destroyed: list[str] = []

    def create(*, runtime: str, limits: Limits, labels: dict[str, str], image: str | None = None, **_: object):
        box = fake_box(runtime=runtime, limits=limits, container_id=f"c{next(ids)}")
        box.image = image
        return box

    monkeypatch.setattr(pool_module, "create_sandbox", create)
    monkeypatch.setattr(Sandbox, "destroy", lambda self: destroyed.append(self.container_id))
    p = SandboxPool(runtimes=["python"], default_limits=LIMITS, size=0, idle_per_tenant=2, idle_seconds=60)
    p.destroyed = destroyed
    yield p
    p.close()


def test_a_used_sandbox_goes_back_only_to_its_own_tenant(pool):
    box = pool.acquire(tenant="alice", runtime="python", limits=LIMITS)
    pool.release(box, reusable=True)
    other = pool.acquire(tenant="bob", runtime="python", limits=LIMITS)
    again = pool.acquire(tenant="alice", runtime="python", limits=LIMITS)
    assert other.container_id != box.container_id and again is box and box.tenant == "alice"


def test_a_sandbox_whose_reset_is_not_clean_is_destroyed(pool):
    box = pool.acquire(tenant="alice", runtime="python", limits=LIMITS)
    box.transport.script = [[Frame("r", b'{"ok": true, "clean": false}')]]
    pool.release(box, reusable=True)
    pool._janitor.shutdown(wait=True)
    assert box.container_id in pool.destroyed
    assert pool.acquire(tenant="alice", runtime="python", limits=LIMITS) is not box


def test_a_broken_sandbox_is_never_reused(pool):
    box = pool.acquire(tenant="alice", runtime="python", limits=LIMITS)
    box.broken = True
    pool.release(box, reusable=True)
    pool._janitor.shutdown(wait=True)
    assert box.container_id in pool.destroyed


def test_other_container_limits_never_share_a_sandbox(pool):
    box = pool.acquire(tenant="alice", runtime="python", limits=LIMITS)
    pool.release(box, reusable=True)
    bigger = Limits(**{**LIMITS.to_json(), "memory": LIMITS.memory * 2})
    assert pool.acquire(tenant="alice", runtime="python", limits=bigger) is not box


def test_a_tenant_keeps_at_most_idle_per_tenant_sandboxes(pool):
    boxes = [pool.acquire(tenant="alice", runtime="python", limits=LIMITS) for _ in range(3)]
    for box in boxes:
        pool.release(box, reusable=True)
    pool._janitor.shutdown(wait=True)
    assert pool.destroyed == [boxes[0].container_id] and pool.stats()["idle"] == 2
