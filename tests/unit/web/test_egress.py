"""Network "filtered" on the web side: the run's egress policy, the tenant's patterns, the result's networkLogs.

No database here: tenants and executions are unsaved rows; the totals use the real Redis.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from executions.models import Execution, Status
from executions.policy import resolve_egress
from executions.results import result_payload
from executions.services import answer_for
from isol8_site.errors import PolicyDenied
from isol8_site.redis import get_redis
from isol8_site.settings import env_ports
from sandbox.netfilter import EgressPolicy
from sandbox.spec import RunResult
from tenants import quotas
from tenants.models import DEFAULT_TENANT_FIELDS, Tenant, default_networks

ENTRY = {"timestamp": "2026-12-02T20:00:00.000Z", "method": "CONNECT", "host": "pypi.org", "port": 443,
         "path": None, "action": "ALLOW", "reason": "", "bytesUp": 517, "bytesDown": 4096, "durationMs": 80}
BLOCKED = {**ENTRY, "host": "evil.example", "action": "BLOCK", "reason": "not_whitelisted", "bytesUp": 0,
           "bytesDown": 0, "durationMs": 0}
TOTALS = {"connections": 3, "allowed": 1, "blocked": 2, "bytesUp": 517, "bytesDown": 4096, "dropped": 1}
LOG = {"entries": [ENTRY, BLOCKED], "totals": TOTALS}


def tenant(**fields: Any) -> Tenant:
    values: dict[str, Any] = {"slug": f"e-{uuid.uuid4().hex[:8]}", "allowed_networks": ["none", "filtered"], **fields}
    return Tenant(**values)


def egress(options: dict[str, Any] | None = None, network: str = "filtered", **fields: Any) -> dict[str, Any]:
    return resolve_egress(tenant=tenant(**fields), options=options or {}, network=network)


# ------------------------------------------------------------------ the policy


def test_a_run_on_another_network_has_no_egress_policy():
    assert egress({"networkFilter": {"whitelist": ["pypi.org"], "blacklist": []}}, network="none") == {}


def test_the_policy_joins_the_request_filter_the_tenant_patterns_caps_and_the_server_ports(settings):
    settings.ISOL8_EGRESS_PORTS = (443, 8443)
    got = egress(
        {"networkFilter": {"whitelist": [r"^pypi\.org$"], "blacklist": ["ads"]}},
        egress_hosts=[r"\.org$"], max_egress_connections=5, max_egress_bytes=1000, egress_bytes_per_second=100,
        max_egress_open=3,
    )
    assert EgressPolicy.from_json(got) == EgressPolicy(
        whitelist=(r"^pypi\.org$",), blacklist=("ads",), tenant_hosts=(r"\.org$",), ports=(443, 8443),
        max_connections=5, max_bytes=1000, bytes_per_second=100, tenant_connections=3,
    )
    # Plain JSON, as the history row gives it back.
    assert json.loads(json.dumps(got)) == got


def test_new_tenants_get_the_egress_caps_of_the_settings(settings):
    got = EgressPolicy.from_json(egress())
    assert (got.max_connections, got.max_bytes, got.bytes_per_second, got.tenant_connections) == (
        settings.ISOL8_EGRESS_RUN_CONNECTIONS, settings.ISOL8_EGRESS_RUN_BYTES, settings.ISOL8_EGRESS_RUN_BPS,
        settings.ISOL8_EGRESS_TENANT_CONNECTIONS,
    )
    assert (got.max_connections, got.max_bytes, got.bytes_per_second, got.tenant_connections) == (
        64, 256 * 1024**2, 0, 32)
    assert got.ports == (80, 443) and got.tenant_hosts == ()


@pytest.mark.parametrize("pattern", ["evil.example", r"^evil\.example$", "files.pythonhosted.org.evil.example"])
def test_a_literal_host_outside_the_tenant_patterns_is_denied_naming_it(pattern):
    with pytest.raises(PolicyDenied, match="outside this tenant's egress policy") as caught:
        egress({"networkFilter": {"whitelist": [pattern]}}, egress_hosts=[r"^pypi\.org$", r"(^|\.)pythonhosted\.org$"])
    assert caught.value.code == "policy_denied"
    assert pattern.replace("\\", "").strip("^$") in caught.value.message


@pytest.mark.parametrize("pattern", ["pypi.org", r"^pypi\.org$", "files.pythonhosted.org", r"^(pypi|evil)\.", ".*"])
def test_literal_hosts_inside_the_tenant_patterns_and_other_patterns_are_accepted(pattern):
    # Patterns that are not one host are narrowed by the gateway at each connection.
    got = egress({"networkFilter": {"whitelist": [pattern]}}, egress_hosts=[r"^pypi\.org$", r"\.pythonhosted\.org$"])
    assert got["whitelist"] == [pattern]


def test_a_tenant_without_egress_hosts_accepts_any_whitelist():
    got = egress({"networkFilter": {"whitelist": ["evil.example", "anything.at.all"]}})
    assert got["whitelist"] == ["evil.example", "anything.at.all"] and got["tenant_hosts"] == []


def test_tenant_patterns_edited_past_the_admin_are_a_policy_error_not_a_crash():
    with pytest.raises(PolicyDenied, match="egress_hosts are not valid"):
        egress(egress_hosts=["(unclosed"])


# ------------------------------------------------------------------ the tenant


@pytest.mark.parametrize(("hosts", "words"), [
    (["(unclosed"], "egress_hosts: '(unclosed' is not a valid regular expression"),
    (["ok", ""], "non-empty string"),
    (["x"] * 65, "at most 64 patterns"),
    ("pypi.org", "A list of patterns"),
])
def test_tenant_clean_names_a_bad_egress_pattern(hosts, words):
    with pytest.raises(ValidationError) as caught:
        tenant(egress_hosts=hosts).clean()
    assert words in " ".join(caught.value.message_dict["egress_hosts"])


def test_tenant_clean_accepts_good_patterns():
    tenant(egress_hosts=[r"^pypi\.org$", r"\.example\.com$"]).clean()
    tenant().clean()


def test_only_the_default_tenant_may_use_filtered_out_of_the_box():
    assert default_networks() == ["none"]
    assert DEFAULT_TENANT_FIELDS["allowed_networks"] == ["none", "filtered"]
    assert Tenant().egress_hosts == []


@pytest.mark.parametrize(("raw", "ports"), [("80,443", (80, 443)), ("443", (443,)), (" 80 , 8080 ", (80, 8080))])
def test_egress_ports_setting(monkeypatch, raw, ports):
    monkeypatch.setenv("ISOL8_TEST_PORTS", raw)
    assert env_ports("ISOL8_TEST_PORTS", "80") == ports


@pytest.mark.parametrize("raw", ["", "http", "0", "70000", "80;443"])
def test_a_bad_egress_ports_setting_stops_startup_with_its_name(monkeypatch, raw):
    monkeypatch.setenv("ISOL8_TEST_PORTS", raw)
    with pytest.raises(ValueError, match="ISOL8_TEST_PORTS"):
        env_ports("ISOL8_TEST_PORTS", "80")


# ------------------------------------------------------------------ the result


def finished(*, log_network: bool, filtered: bool = True, network_log: Any = LOG) -> Execution:
    request: dict[str, Any] = {"logNetwork": True} if log_network else {}
    if filtered:
        request["egress"] = EgressPolicy().to_json()
    return Execution(id=uuid.uuid4(), runtime="python", status=Status.OK, exit_code=0, duration_ms=5,
                     request=request, limits={"max_output": 1024}, network_log=network_log)


def test_the_answer_carries_network_logs_only_when_the_run_asked_for_them():
    answer = json.loads(answer_for(finished(log_network=True), RunResult(status="ok", exit_code=0)).result or b"")
    assert answer["networkLogs"] == [{k: v for k, v in ENTRY.items() if k != "path"},
                                     {k: v for k, v in BLOCKED.items() if k != "path"}]
    quiet = json.loads(answer_for(finished(log_network=False), RunResult(status="ok", exit_code=0)).result or b"")
    assert "networkLogs" not in quiet


def test_network_logs_are_left_out_when_empty_or_the_run_was_not_filtered():
    empty = {"entries": [], "totals": {**TOTALS, "connections": 0}}
    assert "networkLogs" not in result_payload(finished(log_network=True, network_log=empty))
    assert "networkLogs" not in result_payload(finished(log_network=True, network_log=None))
    assert "networkLogs" not in result_payload(finished(log_network=True, filtered=False))


def test_a_path_is_kept_when_the_proxy_saw_one():
    entry = {**ENTRY, "method": "GET", "port": 80, "path": "/simple/"}
    got = result_payload(finished(log_network=True, network_log={"entries": [entry], "totals": TOTALS}))
    assert got["networkLogs"] == [entry]


# ------------------------------------------------------------------ the totals


def test_a_runs_egress_totals_add_up_per_tenant_and_month():
    t = tenant()
    try:
        assert quotas.egress_usage(tenant=t) == dict.fromkeys(quotas.EGRESS_TOTALS, 0)
        quotas.count_egress(tenant_slug=t.slug, totals=TOTALS)
        quotas.count_egress(tenant_slug=t.slug, totals={**TOTALS, "connections": 1, "allowed": 1, "blocked": 0})
        assert quotas.egress_usage(tenant=t) == {
            "connections": 4, "allowed": 2, "blocked": 2, "bytesUp": 1034, "bytesDown": 8192}
        assert get_redis().ttl(quotas._egress_key(t.slug)) > 30 * 86400
    finally:
        get_redis().delete(quotas._egress_key(t.slug))


def test_totals_that_are_not_counts_are_not_trusted():
    t = tenant()
    quotas.count_egress(tenant_slug=t.slug, totals={"connections": "9", "allowed": True, "bytesUp": -5})
    assert not get_redis().exists(quotas._egress_key(t.slug))
    assert quotas.egress_usage(tenant=t)["connections"] == 0
