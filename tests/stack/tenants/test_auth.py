"""Authentication exactly as api.md describes it, through the real stack."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from tenants.services import apikey_create, apikey_revoke

pytestmark = pytest.mark.stack

BODY = {"request": {"runtime": "bash", "code": "echo ok"}}


def post(stack, headers):
    return httpx.post(f"{stack.url}/execute", json=BODY, headers=headers, timeout=60)


def test_missing_header_is_401_with_www_authenticate(stack, transactional_db):
    response = post(stack, {})
    assert response.status_code == 401
    assert response.json() == {"error": "Missing Authorization header", "code": "unauthorized"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_unknown_key_is_401_and_says_nothing_more(stack, transactional_db):
    response = post(stack, {"Authorization": "Bearer isol8_" + "0" * 64})
    assert response.status_code == 401
    assert response.json() == {"error": "Invalid API key", "code": "unauthorized"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("template", ["Bearer {}", "bearer    {}", "BEARER {}", "{}"])
def test_scheme_is_case_insensitive_spaces_allowed_and_bare_key_accepted(stack, tenant, template):
    key = apikey_create(tenant=tenant).plaintext
    response = post(stack, {"Authorization": template.format(key)})
    assert response.status_code == 200, response.text
    assert response.json()["stdout"] == "ok"


def test_key_in_query_string_is_not_accepted(stack, tenant):
    key = apikey_create(tenant=tenant).plaintext
    response = httpx.post(f"{stack.url}/execute?key={key}&apiKey={key}", json=BODY, timeout=60)
    assert response.status_code == 401


def test_revoked_key_is_refused_on_the_next_request(stack, tenant):
    created = apikey_create(tenant=tenant)
    headers = {"Authorization": f"Bearer {created.plaintext}"}
    assert post(stack, headers).status_code == 200
    assert apikey_revoke(api_key=created.api_key) is True
    response = post(stack, headers)
    assert response.status_code == 401
    assert response.json()["error"] == "Invalid API key"
    assert apikey_revoke(api_key=created.api_key) is False  # irreversible, idempotent


def test_expired_key_is_401(stack, tenant):
    created = apikey_create(tenant=tenant, ttl=timedelta(milliseconds=1))
    response = post(stack, {"Authorization": f"Bearer {created.plaintext}"})
    assert response.status_code == 401


def test_disabled_tenant_is_403(stack, tenant):
    key = apikey_create(tenant=tenant).plaintext
    tenant.is_active = False
    tenant.save()
    response = post(stack, {"Authorization": f"Bearer {key}"})
    assert response.status_code == 403
    assert response.json() == {"error": "Tenant is disabled", "code": "forbidden"}


def test_master_key_executes_under_the_default_tenant(stack, transactional_db):
    from executions.models import Execution

    response = post(stack, {"Authorization": f"Bearer {stack.env['ISOL8_API_KEY']}"})
    assert response.status_code == 200
    assert Execution.objects.get(pk=response.json()["executionId"]).tenant.slug == "default"


def test_last_use_is_recorded(stack, tenant):
    created = apikey_create(tenant=tenant)
    assert created.api_key.last_used_at is None
    post(stack, {"Authorization": f"Bearer {created.plaintext}"})
    created.api_key.refresh_from_db()
    assert created.api_key.last_used_at is not None


def test_only_a_digest_is_stored(tenant):
    created = apikey_create(tenant=tenant)
    assert created.plaintext.startswith("isol8_") and len(created.plaintext) == 6 + 64
    created.api_key.refresh_from_db()
    assert created.plaintext not in (created.api_key.digest, created.api_key.prefix)
    assert created.api_key.display_prefix == created.plaintext[:10] + "..."
