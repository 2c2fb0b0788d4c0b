"""Execution history over the API: tenant-scoped, filtered, paginated."""

from __future__ import annotations

import pytest

from tests.conftest import make_key, run

pytestmark = pytest.mark.stack


def test_list_shows_own_runs_newest_first_with_record_fields(api):
    first = run(api, {"runtime": "bash", "code": "echo one"}).json()
    second = run(api, {"runtime": "python", "code": "print('two')"}).json()
    results = api.get("/executions").json()["results"]
    assert [r["executionId"] for r in results[:2]] == [second["executionId"], first["executionId"]]
    record = results[0]
    assert record["code"] == "print('two')"
    assert record["stdout"] == "two"
    assert record["sessionId"] is None
    for name in ("createdAt", "startedAt", "finishedAt"):
        assert record[name].endswith("Z")


def test_filters_by_status_and_runtime(api):
    run(api, {"runtime": "bash", "code": "echo a"})
    run(api, {"runtime": "python", "code": "import time; time.sleep(5)", "timeoutMs": 300})
    timeouts = api.get("/executions", params={"status": "timeout"}).json()["results"]
    assert timeouts and all(r["status"] == "timeout" for r in timeouts)
    bash = api.get("/executions", params={"runtime": "bash"}).json()["results"]
    assert bash and all(r["runtime"] == "bash" for r in bash)
    assert api.get("/executions", params={"since": "not-a-date"}).status_code == 400
    assert api.get("/executions", params={"since": "2999-01-01T00:00:00Z"}).json()["results"] == []


def test_another_tenant_cannot_read_or_list_my_runs(api, stack):
    from tenants.services import tenant_create

    mine = run(api, {"runtime": "bash", "code": "echo private"}).json()
    other = tenant_create(slug="other-tenant-hist")
    with stack.client(make_key(other)) as them:
        response = them.get(f"/executions/{mine['executionId']}")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
        assert them.get("/executions").json()["results"] == []
        assert them.get(f"/executions/{mine['executionId']}/events").status_code == 404
        assert them.post(f"/executions/{mine['executionId']}/cancel").status_code == 404
    assert api.get(f"/executions/{mine['executionId']}").json()["stdout"] == "private"


def test_unknown_or_malformed_id_is_404(api):
    assert api.get("/executions/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.get("/executions/not-a-uuid").status_code == 404


def test_pagination_follows_next(api, tenant):
    from executions.models import Execution
    from sandbox.spec import Limits

    limits = Limits(timeout_ms=1000, memory=1, cpu=1, pids=1, max_output=1, sandbox_size=1, tmp_size=1)
    for i in range(55):
        Execution.objects.create(tenant=tenant, runtime="bash", code=f"echo {i}", status="ok",
                                 limits=limits.to_json())
    page = api.get("/executions").json()
    assert len(page["results"]) == 50 and page["next"]
    rest = api.get(page["next"]).json()
    assert len(rest["results"]) == 5 and rest["next"] is None
    ids = [r["executionId"] for r in page["results"] + rest["results"]]
    assert len(set(ids)) == 55
