"""isol8's host filter semantics, pattern validation and the addresses the gateway never reaches."""

from __future__ import annotations

import ipaddress

import pytest

from sandbox.netfilter import (
    EgressPolicy,
    PatternError,
    address_allowed,
    check_patterns,
    host_verdict,
    literal_host,
    normalize_host,
)


@pytest.mark.parametrize(("policy", "host", "verdict"), [
    (EgressPolicy(), "anything.example", (True, "")),  # isol8: an empty whitelist lets all through
    (EgressPolicy(whitelist=(r"pypi\.org",)), "PyPI.org", (True, "")),  # searched, case-insensitive
    (EgressPolicy(whitelist=(r"pypi\.org",)), "files.pypi.org.evil.example", (True, "")),  # unanchored
    (EgressPolicy(whitelist=(r"^pypi\.org$",)), "files.pypi.org", (False, "not_whitelisted")),
    (EgressPolicy(whitelist=(".*",), blacklist=("pypi",)), "pypi.org", (False, "blacklisted")),  # blacklist wins
    (EgressPolicy(whitelist=(".*",), tenant_hosts=(r"\.corp$",)), "pypi.org", (False, "tenant_policy")),
    (EgressPolicy(tenant_hosts=(r"\.corp$",)), "git.corp", (True, "")),
])
def test_host_verdicts(policy, host, verdict):
    result = host_verdict(policy, normalize_host(host) or "")
    assert (result.allowed, result.reason) == verdict


def test_a_catastrophic_pattern_is_refused_not_waited_for():
    policy = EgressPolicy(whitelist=(r"^(a|aa)+$",))
    assert host_verdict(policy, "a" * 60 + "b").reason in ("not_whitelisted", "pattern_timeout")


@pytest.mark.parametrize(("patterns", "message"), [
    (["pypi(.org"], "not a valid regular expression"),
    ([""], "non-empty"),
    (["x" * 300], "longer than"),
    (["a"] * 65, "at most 64"),
])
def test_bad_patterns_are_named(patterns, message):
    with pytest.raises(PatternError, match=message):
        check_patterns(patterns, name="options.networkFilter.whitelist")


def test_literal_hosts_are_recognised():
    assert literal_host(r"^pypi\.org$") == "pypi.org"
    assert literal_host("Files.PythonHosted.org") == "files.pythonhosted.org"
    assert literal_host(r".*\.org$") is None and literal_host(r"pypi\d") is None


@pytest.mark.parametrize(("address", "allowed"), [
    ("8.8.8.8", True), ("203.0.113.80", True), ("2606:4700:4700::1111", True),
    ("10.1.2.3", False), ("172.17.0.1", False), ("192.168.1.1", False), ("127.0.0.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False),
    ("::ffff:10.0.0.1", False), ("fe80::1", False), ("fd00::2", False), ("64:ff9b::a00:1", False),
    ("not-an-ip", False),
])
def test_addresses_the_gateway_never_connects_to(address, allowed):
    assert address_allowed(address) is allowed


def test_own_addresses_stay_blocked_and_permitted_networks_open():
    assert not address_allowed("8.8.8.8", own=frozenset({"8.8.8.8"}))
    mirror = (ipaddress.ip_network("10.9.0.0/16"),)
    assert address_allowed("10.9.1.1", permitted=mirror)
    assert not address_allowed("10.9.1.1", own=frozenset({"10.9.1.1"}), permitted=mirror)


def test_policy_round_trips_through_json():
    policy = EgressPolicy(whitelist=("a",), blacklist=("b",), tenant_hosts=("c",), ports=(443,), max_bytes=5)
    assert EgressPolicy.from_json(policy.to_json()) == policy
