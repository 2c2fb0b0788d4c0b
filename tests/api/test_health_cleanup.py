"""GET /health from the workers' heartbeats, and POST /cleanup answered by the fake workers."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from isol8_site import dispatch, wire
from isol8_site.redis import get_redis
from sessions_app.models import Session, SessionState
from tests.api.conftest import assert_error, assert_nothing_started, make_session


def test_health_is_ok_with_a_fresh_heartbeat(client, transactional_db, settings):
    wire.beat(settings.ISOL8_WORKER_HOST, {"docker": True})
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": settings.ISOL8_VERSION}


def test_health_needs_no_key_and_ignores_a_bad_one(client, transactional_db, settings):
    wire.beat(settings.ISOL8_WORKER_HOST, {"docker": True})
    assert client.get("/health", HTTP_AUTHORIZATION="Bearer isol8_" + "0" * 64).status_code == 200


def test_health_without_any_worker_is_503_degraded(client, transactional_db):
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"] == {"database": "ok", "redis": "ok", "workers": "error: no worker alive",
                              "docker": "unknown (no worker alive)"}


def test_health_with_a_stale_heartbeat_is_503(client, transactional_db, settings):
    stale = {"at": time.time() - 10 * settings.ISOL8_HEARTBEAT_SECONDS, "docker": True}
    get_redis().hset(wire.heartbeat_key(), settings.ISOL8_WORKER_HOST, json.dumps(stale))
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["checks"]["workers"] == "error: no worker alive"


def test_health_when_no_worker_reaches_docker_is_503(client, transactional_db, settings):
    wire.beat(settings.ISOL8_WORKER_HOST, {"docker": False})
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["workers"] == 1
    assert body["checks"]["docker"] == "error: no worker reaches its Docker engine"


def test_health_is_ok_when_one_of_two_workers_reaches_docker(client, transactional_db):
    wire.beat("host-a", {"docker": False})
    wire.beat("host-b", {"docker": True})
    assert client.get("/health").status_code == 200


# ------------------------------------------------------------------- cleanup


def test_cleanup_with_a_tenant_key_is_403_and_touches_nothing(api, fake_dispatch, tenant):
    session = make_session(tenant, "s1")
    wire.beat("host-a", {"docker": True})
    assert_error(api.post("/cleanup"), 403, "forbidden", "master key")
    assert_nothing_started(fake_dispatch)
    session.refresh_from_db()
    assert session.state == SessionState.ACTIVE


def test_cleanup_without_a_key_is_401(client, fake_dispatch, transactional_db):
    response = client.post("/cleanup")
    assert_error(response, 401, "unauthorized")
    assert response["WWW-Authenticate"] == "Bearer"
    assert fake_dispatch.sent == []


def test_cleanup_counts_what_every_live_worker_removed(master, fake_dispatch):
    wire.beat("host-a", {"docker": True})
    wire.beat("host-b", {"docker": True})
    fake_dispatch.answer_cleanup(3)
    response = master.post("/cleanup")
    assert response.status_code == 200, response.content
    assert response.json() == {"ok": True, "sessions": {"removed": 0},
                               "containers": {"removed": 6, "workers": 2, "unanswered": 0}}
    orphans = [s for s in fake_dispatch.sent if s.name == dispatch.REMOVE_ORPHANS]
    assert sorted(s.queue for s in orphans) == [dispatch.host_queue("host-a"), dispatch.host_queue("host-b")]
    assert len({s.args for s in orphans}) == 1  # one request id, answered by both


def test_cleanup_with_no_live_worker_sends_nothing(master, fake_dispatch):
    response = master.post("/cleanup")
    assert response.status_code == 200
    assert response.json()["containers"] == {"removed": 0, "workers": 0, "unanswered": 0}
    assert fake_dispatch.sent == []


@pytest.mark.parametrize("busy", [False, True])
def test_cleanup_stops_idle_sessions_of_every_tenant_but_never_a_busy_one(
    master, fake_dispatch, tenant, other_tenant, busy
):
    mine = make_session(tenant, "idle", container_id="c-1", worker_host="host-a")
    theirs = make_session(other_tenant, "running", container_id="c-2", worker_host="host-b",
                          busy_execution=uuid.uuid4() if busy else None)
    response = master.post("/cleanup")
    assert response.status_code == 200, response.content
    assert response.json()["sessions"] == {"removed": 1 if busy else 2}
    assert Session.objects.get(pk=mine.pk).state == SessionState.STOPPED
    assert Session.objects.get(pk=theirs.pk).state == (SessionState.ACTIVE if busy else SessionState.STOPPED)
    stops = {(s.args, s.queue) for s in fake_dispatch.sent if s.name == dispatch.STOP_SESSION_CONTAINER}
    expected = {((mine.pk, "c-1"), dispatch.host_queue("host-a"))}
    if not busy:
        expected.add(((theirs.pk, "c-2"), dispatch.host_queue("host-b")))
    assert stops == expected
