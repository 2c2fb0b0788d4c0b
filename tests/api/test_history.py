"""GET /executions, GET /executions/{id}, POST /executions/{id}/cancel, the token and events routes."""

from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import pytest
from django.utils import timezone

from executions.models import Execution, Status
from executions.services import execution_claim
from isol8_site import wire
from isol8_site.redis import get_redis
from tenants import quotas
from tests.api.conftest import assert_error, make_session, start_queued


def finished(tenant, *, status: str = Status.OK, runtime: str = "bash", session=None, ago: float = 0,
             code: str = "echo hi") -> Execution:
    """A finished execution of ``tenant``, created ``ago`` seconds back."""
    row = Execution.objects.create(
        tenant=tenant, runtime=runtime, code=code, status=status, session=session, exit_code=0, stdout="hi\n",
        started_at=timezone.now(), finished_at=timezone.now(), duration_ms=5,
    )
    if ago:
        Execution.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(seconds=ago))
        row.refresh_from_db()
    return row


# ------------------------------------------------------------------- listing


def test_history_lists_only_this_tenants_executions_newest_first(api, tenant, other_tenant):
    old = finished(tenant, ago=20)
    new = finished(tenant, ago=10, code="echo new")
    finished(other_tenant)
    response = api.get("/executions")
    assert response.status_code == 200
    body = response.json()
    assert [r["executionId"] for r in body["results"]] == [str(new.pk), str(old.pk)]
    assert body["next"] is None
    record = body["results"][0]
    assert (record["code"], record["stdout"], record["status"], record["sessionId"]) == ("echo new", "hi", "ok", None)
    assert record["createdAt"].endswith("Z") and record["finishedAt"].endswith("Z")


def test_history_filters_by_status_runtime_session_and_time(api, tenant):
    session = make_session(tenant, "s1")
    ok_bash = finished(tenant, ago=300)
    timed_out = finished(tenant, status=Status.TIMEOUT, ago=200)
    python = finished(tenant, runtime="python", ago=100)
    in_session = finished(tenant, session=session, ago=50)

    def ids(**params):
        response = api.get("/executions", params)
        assert response.status_code == 200, response.content
        return {r["executionId"] for r in response.json()["results"]}

    assert ids(status="timeout") == {str(timed_out.pk)}
    assert ids(runtime="python") == {str(python.pk)}
    assert ids(sessionId="s1") == {str(in_session.pk)}
    since = (timezone.now() - timedelta(seconds=150)).isoformat()
    assert ids(since=since) == {str(python.pk), str(in_session.pk)}
    assert ids(until=since) == {str(ok_bash.pk), str(timed_out.pk)}
    assert ids(status="ok", runtime="bash", until=since) == {str(ok_bash.pk)}


@pytest.mark.parametrize(
    ("params", "mentions"),
    [
        ({"status": "exploded"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2024-13-45T00:00:00Z"}, "until"),
        ({"until": "not a date"}, "until"),
    ],
)
def test_history_refuses_bad_filters(api, tenant, params, mentions):
    assert_error(api.get("/executions", params), 400, "validation_error", mentions)


def test_history_pages_with_next(api, tenant):
    rows = Execution.objects.bulk_create(
        Execution(tenant=tenant, runtime="bash", code=f"echo {i}", status=Status.OK) for i in range(53)
    )
    now = timezone.now()
    for i, row in enumerate(rows):
        Execution.objects.filter(pk=row.pk).update(created_at=now - timedelta(seconds=i))
    first = api.get("/executions", {"runtime": "bash"}).json()
    assert [r["code"] for r in first["results"]] == [f"echo {i}" for i in range(50)]
    next_url = urlparse(first["next"])
    assert next_url.path == "/executions"
    assert parse_qs(next_url.query) == {"runtime": ["bash"], "before": [str(rows[49].pk)]}
    second = api.get(f"{next_url.path}?{next_url.query}").json()
    assert [r["code"] for r in second["results"]] == ["echo 50", "echo 51", "echo 52"]
    assert second["next"] is None


# -------------------------------------------------------------------- detail


def test_detail_shows_a_queued_execution_without_a_result(api, fake_dispatch, tenant):
    fake_dispatch.answer_runs(None)
    row = start_queued(tenant)
    response = api.get(f"/executions/{row.pk}")
    assert response.status_code == 200
    body = response.json()
    assert (body["executionId"], body["status"], body["startedAt"]) == (str(row.pk), "queued", None)
    assert "stdout" not in body


@pytest.mark.parametrize("route", ["/executions/{id}", "/executions/{id}/cancel", "/executions/{id}/token"])
def test_another_tenants_execution_is_404(api, fake_dispatch, tenant, other_tenant, route):
    theirs = finished(other_tenant)
    method = api.get if route == "/executions/{id}" else api.post
    assert_error(method(route.format(id=theirs.pk)), 404, "not_found", "Execution not found")
    theirs.refresh_from_db()
    assert theirs.status == Status.OK


@pytest.mark.parametrize("execution_id", ["not-a-uuid", str(uuid.uuid4()), "1", "%00"])
@pytest.mark.parametrize("route", ["/executions/{id}", "/executions/{id}/cancel", "/executions/{id}/token"])
def test_an_unknown_or_malformed_execution_id_is_404(api, fake_dispatch, tenant, route, execution_id):
    method = api.get if route == "/executions/{id}" else api.post
    assert_error(method(route.format(id=execution_id)), 404, "not_found")


# -------------------------------------------------------------------- cancel


def test_cancel_of_a_queued_execution_cancels_it_and_frees_its_slot(api, fake_dispatch, tenant):
    fake_dispatch.answer_runs(None)
    tenant.max_concurrent = 1
    tenant.save()
    row = start_queued(tenant)
    assert quotas.tenant_usage(tenant=tenant).running == 1
    response = api.post(f"/executions/{row.pk}/cancel")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "status": "cancelled", "executionId": str(row.pk)}
    row.refresh_from_db()
    assert row.status == Status.CANCELLED and row.finished_at is not None
    assert quotas.tenant_usage(tenant=tenant).running == 0
    # The waiting /execute would get the cancelled result.
    raw = get_redis().lpop(wire.result_key(row.pk))
    assert raw is not None and wire.ResultMessage.decode(raw).result is not None
    # A worker that gets the message late cannot run it any more.
    assert execution_claim(execution_id=str(row.pk)) is None


def test_cancel_of_a_queued_session_run_frees_the_session(api, fake_dispatch, tenant):
    fake_dispatch.answer_runs(None)
    session = make_session(tenant, "s1", runtime="bash")
    row = start_queued(tenant, session_id="s1")
    session.refresh_from_db()
    assert session.busy_execution == row.pk
    assert api.post(f"/executions/{row.pk}/cancel").json()["status"] == "cancelled"
    session.refresh_from_db()
    assert session.busy_execution is None


def test_cancel_of_a_running_execution_tells_its_worker(api, fake_dispatch, tenant):
    fake_dispatch.answer_runs(None)
    row = start_queued(tenant)
    assert execution_claim(execution_id=str(row.pk)) is not None
    pubsub = get_redis().pubsub()
    pubsub.subscribe(wire.CANCEL_CHANNEL)
    try:
        pubsub.get_message(timeout=1)
        response = api.post(f"/executions/{row.pk}/cancel")
        message = pubsub.get_message(timeout=2)
    finally:
        pubsub.close()
    assert response.json() == {"ok": True, "status": "running", "executionId": str(row.pk)}
    assert message is not None and message["data"] in (str(row.pk), str(row.pk).encode())


@pytest.mark.parametrize("status", [Status.OK, Status.TIMEOUT, Status.CANCELLED, Status.ERROR])
def test_cancel_of_a_finished_execution_is_ok_false(api, fake_dispatch, tenant, status):
    row = finished(tenant, status=status)
    response = api.post(f"/executions/{row.pk}/cancel")
    assert response.status_code == 200
    assert response.json() == {"ok": False, "status": status, "executionId": str(row.pk)}
    row.refresh_from_db()
    assert row.status == status


# ------------------------------------------------------------ token, events


def test_a_stream_token_reads_only_its_own_execution(api, fake_dispatch, tenant, client):
    row = finished(tenant)
    other = finished(tenant)
    minted = api.post(f"/executions/{row.pk}/token")
    assert minted.status_code == 200, minted.content
    token = minted.json()["token"]
    assert minted.json()["eventsUrl"].startswith(f"/executions/{row.pk}/events?token=")
    refused = client.get(f"/executions/{other.pk}/events", {"token": token}, HTTP_ACCEPT="text/event-stream")
    assert_error(refused, 401, "unauthorized", "another stream")
    forged = client.get(f"/executions/{row.pk}/events", {"token": token + "x"}, HTTP_ACCEPT="text/event-stream")
    assert_error(forged, 401, "unauthorized", "stream token")
    # A token is no key: other routes refuse it.
    assert_error(client.get("/executions", {"token": token}), 401, "unauthorized")


def test_events_of_an_unknown_execution_is_404(api, fake_dispatch, tenant):
    response = api.get(f"/executions/{uuid.uuid4()}/events", HTTP_ACCEPT="text/event-stream")
    assert_error(response, 404, "not_found", "Execution not found")


def test_events_refuse_an_accept_without_event_streams_with_406(api, fake_dispatch, tenant):
    row = finished(tenant)
    response = api.get(f"/executions/{row.pk}/events", HTTP_ACCEPT="application/json")
    assert_error(response, 406, "not_acceptable", "text/event-stream")
