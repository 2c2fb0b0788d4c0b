"""executions/webhooks.py's rules: which hosts and addresses a callback may reach, and the signature."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from executions import webhooks
from isol8_site.errors import PolicyDenied, ValidationFailed
from tenants.models import Tenant


@pytest.mark.parametrize(("address", "allowed"), [
    ("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True),
    ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.1.1", False), ("100.64.0.1", False),
    ("169.254.169.254", False), ("fe80::1", False), ("fd00::1", False), ("224.0.0.1", False),
    ("0.0.0.0", False), ("::", False), ("::ffff:10.0.0.1", False), ("240.0.0.1", False),
])
def test_only_public_unicast_addresses_are_reachable(settings, address, allowed):
    settings.ISOL8_WEBHOOK_ALLOW_LOOPBACK = False
    assert webhooks.address_allowed(address) is allowed


def test_loopback_only_with_the_setting(settings):
    settings.ISOL8_WEBHOOK_ALLOW_LOOPBACK = False
    assert not webhooks.address_allowed("127.0.0.1") and not webhooks.address_allowed("::ffff:127.0.0.1")
    settings.ISOL8_WEBHOOK_ALLOW_LOOPBACK = True
    assert webhooks.address_allowed("127.0.0.1") and webhooks.address_allowed("::1")


@pytest.mark.parametrize(("host", "allowed"), [
    ("hooks.example.com", True), ("HOOKS.example.com.", True), ("a.b.corp.example", True),
    ("corp.example", False), ("evilcorp.example", False), ("hooks.example.com.evil", False),
])
def test_host_patterns_are_exact_names_or_subdomains(host, allowed):
    assert webhooks.host_allowed(host, ["hooks.example.com", "*.corp.example"]) is allowed


def test_the_signature_is_an_hmac_of_the_timestamp_and_the_body():
    header = webhooks.sign("whsec_x", 1700000000, b'{"a":1}')
    expected = hmac.new(b"whsec_x", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def tenant(**fields: object) -> Tenant:
    return Tenant(slug="t", webhook_secret="whsec_x", callback_hosts=["93.184.216.34", "localhost"], **fields)


def test_a_callback_needs_a_secret_an_allowed_host_and_a_public_address(settings):
    settings.ISOL8_WEBHOOK_ALLOW_LOOPBACK = False
    assert webhooks.check_callback_url(tenant=tenant(), url="https://93.184.216.34/hook") == ["93.184.216.34"]
    with pytest.raises(PolicyDenied, match="resolves to an address"):
        webhooks.check_callback_url(tenant=tenant(), url="http://localhost:8080/hook")
    with pytest.raises(PolicyDenied, match="not one of this tenant's callback hosts"):
        webhooks.check_callback_url(tenant=tenant(), url="https://8.8.8.8/hook")
    with pytest.raises(PolicyDenied, match="no webhook secret"):
        webhooks.check_callback_url(tenant=Tenant(slug="t", callback_hosts=["93.184.216.34"]),
                                    url="https://93.184.216.34/")
    bad_urls = ("javascript:alert(1)", "http:///nohost", "https://user:pw@93.184.216.34/", "http://93.184.216.34:99999/")
    for bad in bad_urls:
        with pytest.raises(ValidationFailed):
            webhooks.check_callback_url(tenant=tenant(), url=bad)
