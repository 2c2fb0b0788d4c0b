"""Sessions pinned to the worker host that owns their container; pruning; restarts."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from sandbox import containers
from sessions_app.models import Session
from sessions_app.services import sessions_prune
from tests.conftest import run, wait_for

pytestmark = pytest.mark.stack


def in_session(api, session_id, code, **request):
    return run(api, {"runtime": "bash", "code": code, **request}, sessionId=session_id)



def test_prune_removes_idle_sessions_but_not_a_running_one(api, tenant):
    in_session(api, "idle", "echo i > f")
    idle = Session.objects.get(tenant=tenant, session_id="idle")
    in_session(api, "running", "true")
    running = Session.objects.get(tenant=tenant, session_id="running")
    worker = threading.Thread(target=in_session, args=(api, "running", "sleep 3"))
    worker.start()
    assert wait_for(lambda: Session.objects.get(pk=running.pk).busy_execution is not None, 10)
    pruned = sessions_prune(now=timezone.now() + timedelta(hours=2))
    worker.join()
    assert pruned >= 1
    assert Session.objects.get(pk=idle.pk).state == "stopped"
    assert Session.objects.get(pk=running.pk).state == "active"
    assert wait_for(lambda: not containers.container_running(idle.container_id))
    assert containers.container_running(running.container_id)
    assert in_session(api, "running", "echo still").json()["stdout"] == "still"


def test_sessions_survive_a_worker_restart(api, stack, tenant):
    in_session(api, "restart", "echo survived > state.txt")
    container_id = Session.objects.get(tenant=tenant, session_id="restart").container_id
    stack.stop("worker")
    stack.start_worker()
    stack.wait_healthy()
    assert containers.container_running(container_id)
    body = in_session(api, "restart", "cat state.txt").json()
    assert body["stdout"] == "survived", body


def test_two_worker_hosts_each_serve_their_own_sessions(api, stack, tenant):
    second_host = stack.env["ISOL8_WORKER_HOST"] + "-b"
    # Whichever worker takes a new session's first run holds it (placement by
    # capacity is issue 19): room for enough sessions that both get some.
    tenant.max_sessions = tenant.max_session_cpus = tenant.max_session_memory = None
    tenant.save()
    stack.start_worker("worker-b", ISOL8_WORKER_HOST=second_host)
    from isol8_site import wire

    assert wait_for(lambda: second_host in wire.alive_hosts(wire.worker_beats()), 60), "worker-b never beat"
    try:
        hosts: dict[str, str] = {}
        for i in range(30):
            name = f"placed-{i}"
            response = in_session(api, name, f"echo {name} > who.txt")
            assert response.status_code == 200, response.text
            hosts[name] = Session.objects.get(tenant=tenant, session_id=name).worker_host
            if len(set(hosts.values())) == 2:
                break
        assert set(hosts.values()) == {stack.env["ISOL8_WORKER_HOST"], second_host}
        for name, host in hosts.items():
            # Each later call must reach the host holding the container, or the file would be missing.
            body = in_session(api, name, "cat who.txt; hostname").json()
            assert body["stdout"].splitlines()[0] == name
            container_id = Session.objects.get(tenant=tenant, session_id=name).container_id
            assert containers.container_attrs(container_id)["Config"]["Labels"]["isol8.host"] == host
    finally:
        stack.stop("worker-b")
        for container in containers.list_managed(host=second_host):
            containers.remove_container(container.id)
