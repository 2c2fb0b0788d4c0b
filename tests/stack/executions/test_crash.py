"""Nothing is left behind when a worker dies mid-run (issue 2, point 9)."""

from __future__ import annotations

import signal

import pytest

from executions.models import Execution
from sandbox import containers
from tests.conftest import make_key, wait_for
from tests.sse import iter_sse

pytestmark = pytest.mark.stack



def test_killed_worker_fails_its_run_frees_the_quota_and_orphans_are_removed(stack, tenant):
    tenant.max_concurrent = 1
    tenant.save()
    victim_host = stack.env["ISOL8_WORKER_HOST"] + "-victim"
    stack.stop("worker")
    victim = stack.start_worker("victim", ISOL8_WORKER_HOST=victim_host)
    try:
        with stack.client(make_key(tenant)) as api:
            stack.wait_healthy()
            with api.stream("POST", "/execute/stream",
                            json={"request": {"runtime": "bash", "code": "echo up; sleep 120"}}) as r:
                execution_id = r.headers["X-Execution-Id"]
                events = iter_sse(r)
                assert next(events).json["data"] == "up\n"
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                # Another worker's reaper notices the dead one and ends the run and its stream.
                stack.start_worker()
                rest = list(events)
            assert rest[-1].json["type"] == "exit"
            row = Execution.objects.get(pk=execution_id)
            assert row.status == "error" and "worker" in row.error
            # The slot of the lost run is free again (max_concurrent=1).
            stack.wait_healthy()
            response = api.post("/execute", json={"request": {"runtime": "bash", "code": "echo again"}})
            assert response.status_code == 200, response.text
            assert response.json()["stdout"] == "again"
        # The crashed worker's containers stay until a worker of that host starts again.
        orphans = {c.id for c in containers.list_managed(host=victim_host)}
        assert orphans
        stack.start_worker("victim", ISOL8_WORKER_HOST=victim_host)
        assert wait_for(lambda: not orphans & {c.id for c in containers.list_managed(host=victim_host)}, 30)
    finally:
        stack.stop("victim")
        for container in containers.list_managed(host=victim_host):
            containers.remove_container(container.id)
        if "worker" not in stack.procs:
            stack.start_worker()
