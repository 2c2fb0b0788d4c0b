"""Placement of new sessions by free capacity, draining, and sessions of unreachable hosts (fake heartbeats).

The heartbeats are written to the real Redis as workers write them; the
dispatch is fake, so where a run is sent is what the tests read.
"""

from __future__ import annotations

import time

import pytest

from isol8_site import dispatch, wire
from sessions_app import placement
from sessions_app.models import Session, WorkerHost
from sessions_app.services import sessions_of_lost_hosts_mark_dead
from tests.api.conftest import assert_error, make_session


def beat(host: str, *, capacity: int = 10, warm: int = 0, idle: int = 0, docker: bool = True, **extra) -> None:
    wire.beat(host, {"docker": docker, "capacity": capacity, "warm": warm, "idle": idle, **extra})


def new_session(api, name: str):
    return api.post("/execute", {"request": {"runtime": "python", "code": "1"}, "sessionId": name}, format="json")


def placed_on(tenant, name: str) -> str:
    return Session.objects.get(tenant=tenant, session_id=name).worker_host


def test_a_new_session_goes_to_the_host_with_most_free_room(api, tenant, fake_dispatch):
    beat("host-a", capacity=10, warm=2, idle=1)  # 7 free
    beat("host-b", capacity=10, warm=1)  # 9 free
    make_session(tenant, "old-1", worker_host="host-b")
    make_session(tenant, "old-2", worker_host="host-b")
    make_session(tenant, "old-3", worker_host="host-b")  # b: 6 free now
    assert new_session(api, "n1").status_code == 200
    assert placed_on(tenant, "n1") == "host-a"
    assert fake_dispatch.sent[-1].queue == dispatch.host_queue("host-a")
    loads = {load.name: load for load in placement.host_loads()}
    assert (loads["host-a"].free, loads["host-b"].free) == (6, 6)


def test_a_full_host_takes_none_and_all_full_is_503(api, tenant, fake_dispatch):
    beat("host-a", capacity=1)
    beat("host-b", capacity=1)
    assert new_session(api, "n1").status_code == 200
    assert new_session(api, "n2").status_code == 200
    assert {placed_on(tenant, "n1"), placed_on(tenant, "n2")} == {"host-a", "host-b"}
    full = new_session(api, "n3")
    body = assert_error(full, 503, "unavailable", "No worker host can take a new session")
    assert full["Retry-After"] and body
    assert not Session.objects.filter(session_id="n3").exists()
    # Existing sessions still run.
    assert api.post("/execute", {"request": {"runtime": "python", "code": "1"}, "sessionId": "n1"},
                    format="json").status_code == 200


@pytest.mark.parametrize("why", ["draining", "docker down", "silent"])
def test_a_draining_dockerless_or_silent_host_gets_no_new_session(api, tenant, fake_dispatch, why):
    beat("host-a", capacity=100)
    beat("host-b", capacity=2)
    if why == "draining":
        WorkerHost.objects.create(name="host-a", draining=True)
    elif why == "docker down":
        beat("host-a", capacity=100, docker=False)
    else:
        wire.get_redis().hset(wire.heartbeat_key(), "host-a", '{"at": 1, "docker": true, "capacity": 100}')
    assert new_session(api, "n1").status_code == 200
    assert placed_on(tenant, "n1") == "host-b"


def test_without_any_live_worker_the_first_worker_takes_it(api, tenant, fake_dispatch):
    assert new_session(api, "n1").status_code == 200
    assert placed_on(tenant, "n1") == ""
    assert fake_dispatch.sent[-1].queue is None  # the shared queue, as before placement


def test_a_session_on_a_host_that_just_went_away_is_503_then_dead(api, tenant, fake_dispatch, settings):
    make_session(tenant, "s1", worker_host="host-a")
    beat("host-a", docker=False, docker_down_since=time.time())
    answer = new_session(api, "s1")
    assert_error(answer, 503, "unavailable", "host-a", "try again")
    assert Session.objects.get(session_id="s1").state == "active" and fake_dispatch.sent == []
    assert Session.objects.get(session_id="s1").busy_execution is None  # the claim rolled back
    beat("host-a", docker=False, docker_down_since=time.time() - settings.ISOL8_HOST_LOST_SECONDS - 1)
    answer = new_session(api, "s1")
    assert_error(answer, 409, "session_dead", "host-a", "stopped answering")
    assert Session.objects.get(session_id="s1").state == "dead"
    # File operations say the same.
    assert_error(api.get("/file", {"sessionId": "s1", "path": "x"}), 409, "session_dead")


def test_the_reaper_marks_sessions_of_lost_hosts_dead(tenant, settings):
    make_session(tenant, "s1", worker_host="host-a")
    make_session(tenant, "s2", worker_host="host-b")
    beat("host-b")
    wire.get_redis().hset(wire.heartbeat_key(), "host-a", f'{{"at": {time.time() - 3600}, "stopped": true}}')
    assert sessions_of_lost_hosts_mark_dead() == 1
    states = dict(Session.objects.values_list("session_id", "state"))
    assert states == {"s1": "dead", "s2": "active"}
