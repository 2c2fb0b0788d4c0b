"""options.network "filtered" through the API: validation, the tenant's policy, sessions, the log, the totals.

The worker's side (the egress gateway) is faked: the fake dispatch finishes a
run with a RunResult whose network_log stands for what the gateway recorded.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings

from executions.models import Execution
from executions.services import execution_spec
from isol8_site.redis import get_redis
from sandbox.netfilter import MAX_PATTERNS, EgressPolicy
from sandbox.spec import RunResult
from sessions_app.models import Session
from tenants import quotas
from tenants.models import Tenant
from tests.api.conftest import assert_error, assert_nothing_started, make_session
from tests.api.test_dashboard import plain_static, staff  # noqa: F401 - plain_static is a fixture

ROUTES = ["/execute", "/execute/stream"]
PY = {"runtime": "python", "code": "print(1)"}
ENTRY = {"timestamp": "2026-12-02T20:00:00.000Z", "method": "CONNECT", "host": "pypi.org", "port": 443,
         "path": None, "action": "ALLOW", "reason": "", "bytesUp": 517, "bytesDown": 4096, "durationMs": 80}
BLOCKED = {**ENTRY, "host": "evil.example", "action": "BLOCK", "reason": "not_whitelisted", "bytesUp": 0,
           "bytesDown": 0, "durationMs": 1}
LOG = {"entries": [ENTRY, BLOCKED],
       "totals": {"connections": 2, "allowed": 1, "blocked": 1, "bytesUp": 517, "bytesDown": 4096, "dropped": 0}}


def post(api, route: str, body: Any):
    return api.post(route, body, format="json", HTTP_ACCEPT="text/event-stream")


def filtered(whitelist: list[str] | None = None, blacklist: list[str] | None = None, **options: Any) -> dict[str, Any]:
    network_filter: dict[str, Any] = {}
    if whitelist is not None:
        network_filter["whitelist"] = whitelist
    if blacklist is not None:
        network_filter["blacklist"] = blacklist
    return {"network": "filtered", "networkFilter": network_filter, **options}


@pytest.fixture(params=ROUTES)
def route(request):
    return request.param


@pytest.fixture
def allowed(tenant: Tenant) -> Tenant:
    """The test tenant, allowed network "filtered"."""
    tenant.allowed_networks = ["none", "filtered"]
    tenant.save()
    return tenant


def only_execution() -> Execution:
    (execution,) = Execution.objects.all()
    return execution


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(("options", "mentions"), [
    (filtered(["(unclosed"]), ["options.networkFilter.whitelist", "(unclosed", "not a valid regular expression"]),
    (filtered(blacklist=["ok", "[z-a]"]), ["options.networkFilter.blacklist", "[z-a]"]),
    (filtered([f"h{i}" for i in range(MAX_PATTERNS + 1)]), ["options.networkFilter.whitelist", "at most 64"]),
    (filtered(["x" * 300]), ["options.networkFilter.whitelist", "longer than 256"]),
    (filtered(["  "]), ["options.networkFilter.whitelist", "non-empty"]),
    (filtered([""]), ["options.networkFilter.whitelist"]),
    ({"network": "filtered", "networkFilter": {"whitelist": [5]}}, ["options.networkFilter.whitelist"]),
    ({"network": "filtered", "networkFilter": {"whitelist": "pypi.org"}}, ["options.networkFilter.whitelist"]),
    ({"network": "filtered", "networkFilter": ["pypi.org"]}, ["options.networkFilter"]),
    ({"network": "filtered", "networkFilter": {"allow": ["pypi.org"]}}, ["allow", "Unknown field"]),
    ({"network": "filtered", "logNetwork": "yes"}, ["options.logNetwork"]),
    # Checked whatever the network: a mistake is named, never carried along.
    ({"network": "none", "networkFilter": {"whitelist": ["(unclosed"]}}, ["options.networkFilter.whitelist"]),
])
def test_a_bad_network_filter_is_400_naming_the_field(api, fake_dispatch, allowed, route, options, mentions):
    response = post(api, route, {"request": PY, "options": options})
    assert_error(response, 400, "validation_error", *mentions)
    assert_nothing_started(fake_dispatch, tenant=allowed)


def test_filtered_on_a_tenant_that_does_not_allow_it_is_403(api, fake_dispatch, tenant, route):
    assert tenant.allowed_networks == ["none"]
    response = post(api, route, {"request": PY, "options": filtered(["pypi.org"])})
    assert_error(response, 403, "policy_denied", "filtered", "not allowed")
    assert_nothing_started(fake_dispatch, tenant=tenant)


def test_a_literal_host_outside_the_tenants_egress_hosts_is_403_naming_it(api, fake_dispatch, allowed, route):
    allowed.egress_hosts = [r"^pypi\.org$", r"\.pythonhosted\.org$"]
    allowed.save()
    response = post(api, route, {"request": PY, "options": filtered(["pypi.org", r"^evil\.example$"])})
    assert_error(response, 403, "policy_denied", "evil.example", "egress policy")
    assert_nothing_started(fake_dispatch, tenant=allowed)


def test_literal_hosts_inside_the_tenants_egress_hosts_are_accepted(api, fake_dispatch, allowed):
    allowed.egress_hosts = [r"^pypi\.org$", r"\.pythonhosted\.org$"]
    allowed.max_egress_connections, allowed.max_egress_bytes = 7, 10_000
    allowed.egress_bytes_per_second, allowed.max_egress_open = 500, 2
    allowed.save()
    fake_dispatch.answer_runs(None)  # stays queued: what the web recorded is what is looked at
    response = post(api, "/execute/stream", {"request": PY, "options": filtered(
        ["pypi.org", "files.pythonhosted.org", r"^(a|b)\.example$"], ["ads"], logNetwork=True)})
    assert response.status_code == 200, response.content
    assert len(fake_dispatch.runs()) == 1
    execution = only_execution()
    spec, limits = execution_spec(execution=execution)
    assert limits.network == "filtered" and spec.log_network is True
    assert EgressPolicy.from_json(spec.egress) == EgressPolicy(
        whitelist=("pypi.org", "files.pythonhosted.org", r"^(a|b)\.example$"), blacklist=("ads",),
        tenant_hosts=(r"^pypi\.org$", r"\.pythonhosted\.org$"), ports=tuple(settings.ISOL8_EGRESS_PORTS),
        max_connections=7, max_bytes=10_000, bytes_per_second=500, tenant_connections=2,
    )


def test_the_default_tenant_accepts_filtered_with_any_whitelist(master, fake_dispatch):
    response = master.post("/execute", {"request": PY, "options": filtered(["anything.example", r"^.*\.io$"])},
                           format="json")
    assert response.status_code == 200, response.content
    execution = only_execution()
    assert execution.tenant.slug == settings.ISOL8_DEFAULT_TENANT
    egress = EgressPolicy.from_json(execution.request["egress"])
    assert egress.whitelist == ("anything.example", r"^.*\.io$") and egress.tenant_hosts == ()
    assert execution.limits["network"] == "filtered"


def test_the_default_tenants_migration_allows_it_filtered(transactional_db):
    migration = importlib.import_module("tenants.migrations.0007_egress")
    Tenant.objects.update_or_create(slug="default", defaults={"allowed_networks": ["none"]})
    migration.default_tenant_filtered(apps, None)
    migration.default_tenant_filtered(apps, None)  # once only, whatever runs it again
    assert Tenant.objects.get(slug="default").allowed_networks == ["none", "filtered"]


def test_a_network_filter_with_network_none_is_accepted_and_ignored(api, fake_dispatch, tenant):
    # isol8 clients send an empty filter on every request.
    options = {"network": "none", "networkFilter": {"whitelist": ["pypi.org"], "blacklist": []}, "logNetwork": True}
    response = post(api, "/execute", {"request": PY, "options": options})
    assert response.status_code == 200, response.content
    execution = only_execution()
    assert "egress" not in execution.request and execution.limits["network"] == "none"
    assert "networkLogs" not in response.json()


# -------------------------------------------------------------------- sessions


def filtered_session(tenant: Tenant, session_id: str = "net", whitelist: tuple[str, ...] = ("pypi.org",)) -> Session:
    egress = EgressPolicy(whitelist=whitelist).to_json()
    return make_session(tenant, session_id, limits={"memory": 512 * 1024**2, "cpu": 1.0, "network": "filtered"},
                        egress={k: list(v) if isinstance(v, tuple) else v for k, v in egress.items()})


def in_session(api, session_id: str, options: dict[str, Any] | None = None):
    body: dict[str, Any] = {"request": PY, "sessionId": session_id}
    if options is not None:
        body["options"] = options
    return api.post("/execute", body, format="json")


def test_a_new_session_keeps_the_network_and_egress_policy_of_its_first_run(api, fake_dispatch, allowed):
    response = in_session(api, "fresh", filtered(["pypi.org"]))
    assert response.status_code == 200, response.content
    session = Session.objects.get(tenant=allowed, session_id="fresh")
    assert session.limits["network"] == "filtered"
    assert session.egress == only_execution().request["egress"]
    assert session.egress["whitelist"] == ["pypi.org"]


@pytest.mark.parametrize(("options", "mentions"), [
    ({"network": "none"}, ['Cannot switch network from "filtered" to "none"', "keeps the network"]),
    (filtered(["files.pythonhosted.org"]), ["networkFilter.whitelist", "keeps the network"]),
    (filtered(["pypi.org"], ["ads"]), ["networkFilter.blacklist", "keeps the network"]),
    # No network named: the session's; its filter named and different.
    ({"networkFilter": {"whitelist": []}}, ["networkFilter.whitelist"]),
])
def test_a_later_run_asking_another_network_or_filter_is_400(api, fake_dispatch, allowed, options, mentions):
    session = filtered_session(allowed)
    assert_error(in_session(api, "net", options), 400, "validation_error", *mentions)
    assert_nothing_started(fake_dispatch, tenant=allowed)
    session.refresh_from_db()
    assert session.busy_execution is None  # the claim rolled back with the refusal


def test_a_none_session_refuses_filtered_later(api, fake_dispatch, allowed):
    make_session(allowed, "plain", limits={"memory": 512 * 1024**2, "cpu": 1.0, "network": "none"})
    assert_error(in_session(api, "plain", filtered(["pypi.org"])), 400, "validation_error",
                 'Cannot switch network from "none" to "filtered"')
    assert_nothing_started(fake_dispatch, tenant=allowed)


@pytest.mark.parametrize("options", [None, {"network": "filtered"}, filtered(["pypi.org", "pypi.org"], []),
                                     {"timeoutMs": 5000}])
def test_a_later_run_naming_the_same_or_nothing_runs_with_the_sessions_policy(api, fake_dispatch, allowed, options):
    session = filtered_session(allowed)
    fake_dispatch.answer_runs(None)
    response = api.post("/execute/stream", {"request": PY, "sessionId": "net", **({"options": options} if options
                                            else {})}, format="json", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 200, response.content
    execution = only_execution()
    spec, limits = execution_spec(execution=execution)
    assert limits.network == "filtered"
    assert spec.egress == session.egress and spec.egress["whitelist"] == ["pypi.org"]


# -------------------------------------------------------------- log and answer


def filtered_result(log: dict[str, Any] | None = LOG) -> RunResult:
    return RunResult(status="ok", exit_code=0, stdout="1\n", stdout_total=2, duration_ms=9, network_log=log)


def without_path(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if v is not None}


def test_the_log_is_stored_and_shown_by_get_execution(api, fake_dispatch, allowed):
    fake_dispatch.answer_runs(filtered_result())
    response = post(api, "/execute", {"request": PY, "options": filtered(["pypi.org"])})
    assert response.status_code == 200, response.content
    assert "networkLogs" not in response.json()  # not asked for (logNetwork)
    execution_id = response.json()["executionId"]
    assert Execution.objects.get(pk=execution_id).network_log == LOG
    detail = api.get(f"/executions/{execution_id}").json()
    assert detail["networkLog"] == LOG and "networkLogs" not in detail
    page = api.get("/executions").json()["results"]
    assert "networkLog" not in page[0] and "networkLogs" not in page[0]


def test_network_logs_are_in_the_answer_only_with_log_network(api, fake_dispatch, allowed):
    fake_dispatch.answer_runs(filtered_result())
    response = post(api, "/execute", {"request": PY, "options": filtered(["pypi.org"], logNetwork=True)})
    assert response.status_code == 200, response.content
    assert response.json()["networkLogs"] == [without_path(ENTRY), without_path(BLOCKED)]
    detail = api.get(f"/executions/{response.json()['executionId']}").json()
    assert detail["networkLogs"] == [without_path(ENTRY), without_path(BLOCKED)]


def test_an_empty_log_leaves_network_logs_out_as_isol8_does(api, fake_dispatch, allowed):
    empty = {"entries": [], "totals": dict.fromkeys(("connections", "allowed", "blocked", "bytesUp", "bytesDown",
                                                     "dropped"), 0)}
    fake_dispatch.answer_runs(filtered_result(empty))
    response = post(api, "/execute", {"request": PY, "options": filtered(logNetwork=True)})
    assert response.status_code == 200, response.content
    assert "networkLogs" not in response.json()


def test_a_run_that_was_not_filtered_has_a_null_network_log(api, fake_dispatch, tenant):
    response = post(api, "/execute", {"request": PY})
    assert response.status_code == 200, response.content
    assert api.get(f"/executions/{response.json()['executionId']}").json()["networkLog"] is None


def test_a_filtered_runs_totals_are_counted_for_its_tenant(api, fake_dispatch, allowed):
    fake_dispatch.answer_runs(filtered_result())
    try:
        for _ in range(2):
            assert post(api, "/execute", {"request": PY, "options": filtered(["pypi.org"])}).status_code == 200
        assert quotas.egress_usage(tenant=allowed) == {
            "connections": 4, "allowed": 2, "blocked": 2, "bytesUp": 1034, "bytesDown": 8192}
    finally:
        get_redis().delete(quotas._egress_key(allowed.slug))


# ----------------------------------------------------------------------- admin


def test_the_execution_page_shows_the_log_as_a_table(api, fake_dispatch, allowed, plain_static):  # noqa: F811
    fake_dispatch.answer_runs(filtered_result({**LOG, "entries": [ENTRY, {**BLOCKED, "host": "<b>x.example"}]}))
    execution_id = post(api, "/execute", {"request": PY, "options": filtered()}).json()["executionId"]
    html = staff(superuser=True).get(f"/admin/executions/execution/{execution_id}/change/").content.decode()
    assert 'class="isol8-network-log"' in html
    assert "pypi.org:443" in html and "ALLOW" in html and "not_whitelisted" in html
    assert "2 connections: 1 allowed, 1 blocked; 517 bytes up, 4096 bytes down" in html
    assert "<b>x.example" not in html and "&lt;b&gt;x.example:443" in html  # the program's text, escaped


def test_the_tenant_page_shows_its_egress_totals(allowed, plain_static):  # noqa: F811
    quotas.count_egress(tenant_slug=allowed.slug, totals={**LOG["totals"], "bytesDown": 3 * 1024**2})
    try:
        html = staff(superuser=True).get(f"/admin/tenants/tenant/{allowed.pk}/change/").content.decode()
    finally:
        get_redis().delete(quotas._egress_key(allowed.slug))
    assert "Egress this month" in html
    assert "2 connections (1 allowed, 1 blocked), 517 B up, 3.0 MiB down" in html
    assert 'name="egress_hosts"' in html and 'name="max_egress_open"' in html


def test_the_tenant_admin_refuses_a_bad_egress_pattern(allowed, plain_static):  # noqa: F811
    client = staff(superuser=True)
    url = f"/admin/tenants/tenant/{allowed.pk}/change/"
    form = client.get(url).context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    for name in ("allowed_runtimes", "allowed_networks", "callback_hosts"):
        data[name] = form[name].field.prepare_value(form[name].value())
    data.update({"egress_hosts": '["(unclosed"]', "api_keys-TOTAL_FORMS": "0", "api_keys-INITIAL_FORMS": "0"})
    response = client.post(url, data)
    assert response.status_code == 200  # the form again, with the error
    assert "is not a valid regular expression" in response.content.decode()
    allowed.refresh_from_db()
    assert allowed.egress_hosts == []
