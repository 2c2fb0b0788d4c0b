"""worker/daemon.py's orphan sweep: what it removes and when it asks what is owned (Docker faked)."""

from __future__ import annotations

import time

import pytest

from sandbox import containers
from sandbox.containers import LABEL_ROLE, ManagedContainer
from sandbox.egress import PROXY_ROLE
from worker import daemon


@pytest.fixture
def engine(monkeypatch):
    now = time.time()  # per test: the suite may reach this test minutes after import
    listed = [
        ManagedContainer(id="old-owned", labels={}, status="running", created=now - 600),
        ManagedContainer(id="old-orphan", labels={}, status="running", created=now - 600),
        ManagedContainer(id="young", labels={}, status="running", created=now),
        ManagedContainer(id="proxy", labels={LABEL_ROLE: PROXY_ROLE}, status="running", created=now - 600),
    ]
    log: list[str] = []

    def list_managed(**labels: str) -> list[ManagedContainer]:
        log.append("listed")
        return listed

    monkeypatch.setattr(containers, "list_managed", list_managed)
    monkeypatch.setattr(containers, "remove_container", lambda cid: log.append(f"removed {cid}"))
    return log


def test_owned_young_and_proxy_containers_are_spared(engine):
    def keep() -> set[str]:
        engine.append("asked")
        return {"old-owned"}

    assert daemon.remove_orphans(keep=keep, min_age=60) == 1
    # What is owned is asked after the listing: a warm sandbox that changed
    # hands while Docker listed is owned by its new holder by then.
    assert engine == ["listed", "asked", "removed old-orphan"]


def test_on_stop_the_proxy_goes_too(engine):
    assert daemon.remove_orphans(keep=lambda: {"old-owned"}, proxies=True) == 3
    assert engine[-3:] == ["removed old-orphan", "removed young", "removed proxy"]
