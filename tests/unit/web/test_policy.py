"""A tenant's policy for a run: limits within its caps, its runtimes and networks, its packages."""

from __future__ import annotations

import pytest

from executions.policy import MIN_MEMORY, check_installs_allowed, resolve_limits, validate_packages
from isol8_site.errors import PolicyDenied, ValidationFailed
from tenants.models import Tenant


def tenant(**caps: object) -> Tenant:
    fields: dict[str, object] = {
        "slug": "t", "max_timeout_ms": 60_000, "max_memory": 1024**3, "max_cpu": 2.0, "max_pids": 128,
        "max_output_size": 2 * 1024**2, "allowed_runtimes": ["python", "bash"], "allowed_networks": ["none"],
        **caps,
    }
    return Tenant(**fields)


def limits(options: dict | None = None, request: dict | None = None, **caps: object):
    return resolve_limits(tenant=tenant(**caps), request={"runtime": "python", **(request or {})},
                          options=options or {})


def test_defaults_apply_when_the_request_asks_for_nothing(settings):
    got = limits()
    d = settings.ISOL8_DEFAULTS
    assert (got.timeout_ms, got.memory, got.cpu, got.pids) == (d.timeout_ms, d.memory_limit, d.cpu_limit, d.pids_limit)
    assert (got.sandbox_size, got.tmp_size, got.network) == (d.sandbox_size, d.tmp_size, "none")


def test_the_request_timeout_wins_over_the_options_timeout():
    assert limits({"timeoutMs": 2000}, {"timeoutMs": 1000}).timeout_ms == 1000
    assert limits({"timeoutMs": 2000}).timeout_ms == 2000


@pytest.mark.parametrize(("options", "request_", "words"), [
    ({"timeoutMs": 60_001}, {}, "timeoutMs 60001 is above this tenant's cap of 60000"),
    ({"memoryLimit": 1024**3 + 1}, {}, "memoryLimit"),
    ({"cpuLimit": 2.5}, {}, "cpuLimit 2.5"),
    ({"pidsLimit": 129}, {}, "pidsLimit 129"),
    ({"maxOutputSize": 2 * 1024**2 + 1}, {}, "maxOutputSize"),
    ({"network": "host"}, {}, "network 'host' is not allowed"),
    ({}, {"runtime": "node"}, "Runtime 'node' is not allowed"),
])
def test_asking_above_a_cap_is_denied_never_lowered(options, request_, words):
    with pytest.raises(PolicyDenied, match=words.replace("(", r"\(")) as caught:
        limits(options, request_)
    assert caught.value.code == "policy_denied"


def test_network_filtered_is_served_to_a_tenant_that_allows_it():
    assert limits({"network": "filtered"}, allowed_networks=["none", "filtered"]).network == "filtered"
    with pytest.raises(PolicyDenied, match="network 'filtered' is not allowed for this tenant"):
        limits({"network": "filtered"})


def test_network_host_is_denied_even_where_the_tenant_allows_it():
    with pytest.raises(PolicyDenied, match="not available on this server"):
        limits({"network": "host"}, allowed_networks=["none", "host"])


def test_memory_below_the_minimum_is_a_validation_error():
    with pytest.raises(ValidationFailed, match="at least 32m"):
        limits({"memoryLimit": MIN_MEMORY - 1})


def test_scratch_space_shrinks_with_a_lowered_memory_limit_and_must_fit_in_it():
    got = limits({"memoryLimit": 64 * 1024**2})
    assert (got.sandbox_size, got.tmp_size) == (16 * 1024**2, 8 * 1024**2)
    with pytest.raises(ValidationFailed, match="sandboxSize \\+ tmpSize must stay below memoryLimit"):
        limits({"memoryLimit": 64 * 1024**2, "sandboxSize": 60 * 1024**2})


def test_package_names_come_back_sorted_and_unique():
    assert validate_packages(runtime="python", packages=["six", "attrs", "six"]) == ["attrs", "six"]
    assert validate_packages(runtime="bash", packages=[]) == []


@pytest.mark.parametrize(("runtime", "packages", "words"), [
    ("bash", ["x"], "not supported for the bash runtime"),
    ("python", ["--index-url=http://evil"], "is not a valid python package name"),
    ("python", ["a" * 201], "is not a valid python package name"),
])
def test_bad_package_requests_are_refused_before_anything_runs(runtime, packages, words):
    with pytest.raises(ValidationFailed, match=words):
        validate_packages(runtime=runtime, packages=packages)


def test_more_packages_than_allowed_are_refused(settings):
    settings.ISOL8_MAX_PACKAGES = 2
    with pytest.raises(ValidationFailed, match="at most 2 packages"):
        validate_packages(runtime="python", packages=["a", "b", "c"])


def test_installs_need_the_tenants_permission():
    check_installs_allowed(tenant=tenant(allow_installs=True), packages=["six"])
    check_installs_allowed(tenant=tenant(allow_installs=False), packages=[])
    with pytest.raises(PolicyDenied, match="installPackages is not allowed"):
        check_installs_allowed(tenant=tenant(allow_installs=False), packages=["six"])
