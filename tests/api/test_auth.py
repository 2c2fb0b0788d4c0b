"""Authentication, master-only routes and the failed-auth throttle (api.md "Authentication")."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from isol8_site.redis import get_redis
from tenants import throttle
from tenants.models import ApiKey
from tenants.services import apikey_create, apikey_revoke
from tests.api.conftest import assert_error, assert_nothing_started, client_for

BODY = {"request": {"runtime": "bash", "code": "echo ok"}}
INVALID = {"error": "Invalid API key", "code": "unauthorized"}


def post_execute(api, **extra):
    return api.post("/execute", BODY, format="json", **extra)


def test_missing_header_is_401_with_www_authenticate(client, fake_dispatch, transactional_db):
    response = post_execute(client)
    assert_error(response, 401, "unauthorized")
    assert response.json() == {"error": "Missing Authorization header", "code": "unauthorized"}
    assert response["WWW-Authenticate"] == "Bearer"
    assert_nothing_started(fake_dispatch)


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer    ", "Basic dXNlcjpwYXNz", "Token isol8_abc", "Bearer isol8_" + "0" * 64,
     "isol8_" + "0" * 64, "Bearer not a key at all"],
)
def test_malformed_or_unknown_key_is_401_invalid_api_key(client, fake_dispatch, tenant, header):
    response = post_execute(client, HTTP_AUTHORIZATION=header)
    if header.strip() == "Bearer":
        # The scheme without a key is a missing key.
        assert response.json() == {"error": "Missing Authorization header", "code": "unauthorized"}
    else:
        assert response.json() == INVALID
    assert_error(response, 401, "unauthorized")
    assert response["WWW-Authenticate"] == "Bearer"
    assert_nothing_started(fake_dispatch)


@pytest.mark.parametrize("template", ["Bearer {}", "bearer    {}", "BEARER {}", "{}", "  Bearer {}  "])
def test_scheme_is_case_insensitive_spaces_allowed_and_bare_key_accepted(client, fake_dispatch, api_key, template):
    response = post_execute(client, HTTP_AUTHORIZATION=template.format(api_key))
    assert response.status_code == 200, response.content
    assert fake_dispatch.names() == ["isol8.run_execution"]


def test_key_in_the_query_string_is_not_accepted(client, fake_dispatch, api_key):
    response = client.post(f"/execute?key={api_key}&apiKey={api_key}", BODY, format="json")
    assert_error(response, 401, "unauthorized")
    assert_nothing_started(fake_dispatch)


def test_revoked_key_is_refused_on_the_next_request(client, fake_dispatch, tenant):
    created = apikey_create(tenant=tenant)
    api = client_for(created.plaintext)
    assert post_execute(api).status_code == 200
    assert apikey_revoke(api_key=created.api_key) is True
    response = post_execute(api)
    assert_error(response, 401, "unauthorized")
    assert response.json() == INVALID
    assert response["WWW-Authenticate"] == "Bearer"
    assert len(fake_dispatch.runs()) == 1  # only the run before the revocation


def test_expired_key_is_401(client, fake_dispatch, tenant):
    created = apikey_create(tenant=tenant, ttl=timedelta(hours=1))
    ApiKey.objects.filter(pk=created.api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = post_execute(client_for(created.plaintext))
    assert_error(response, 401, "unauthorized")
    assert response.json() == INVALID
    assert_nothing_started(fake_dispatch)


def test_key_of_a_disabled_tenant_is_403(fake_dispatch, tenant, api_key):
    tenant.is_active = False
    tenant.save()
    response = post_execute(client_for(api_key))
    assert_error(response, 403, "forbidden")
    assert response.json() == {"error": "Tenant is disabled", "code": "forbidden"}
    assert_nothing_started(fake_dispatch)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/cleanup", None),
        ("post", "/auth/keys", {"name": "sneaky"}),
        ("get", "/auth/keys", None),
        ("delete", "/auth/keys/{key_id}", None),
        ("post", "/auth/login", {}),
    ],
)
def test_tenant_key_on_a_master_only_route_is_403(api, fake_dispatch, tenant, method, path, body):
    own_key = ApiKey.objects.get(tenant=tenant)
    response = getattr(api, method)(path.format(key_id=own_key.pk), body, format="json")
    assert_error(response, 403, "forbidden", "master key")
    assert ApiKey.objects.count() == 1
    assert ApiKey.objects.get().revoked_at is None
    assert_nothing_started(fake_dispatch)


def test_master_key_executes_under_the_default_tenant(master, fake_dispatch):
    from executions.models import Execution

    response = post_execute(master)
    assert response.status_code == 200, response.content
    assert Execution.objects.get(pk=response.json()["executionId"]).tenant.slug == "default"


# ------------------------------------------------------------------- throttle


@pytest.fixture
def address():
    """A client address of this test alone (failure counts are per address, in the shared Redis)."""
    ip = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    get_redis().delete(throttle.failures_key(ip))
    yield ip
    get_redis().delete(throttle.failures_key(ip))


def test_too_many_failed_authentications_are_429_with_retry_after(
    client, fake_dispatch, api_key, settings, address
):
    settings.ISOL8_AUTH_FAILURES_PER_MINUTE = 3
    bad = "Bearer isol8_" + "f" * 64
    for _ in range(3):
        response = post_execute(client, HTTP_AUTHORIZATION=bad, REMOTE_ADDR=address)
        assert_error(response, 401, "unauthorized")
    # Blocked now, whatever key it sends, even a good one.
    for header in (bad, f"Bearer {api_key}"):
        response = post_execute(client, HTTP_AUTHORIZATION=header, REMOTE_ADDR=address)
        assert_error(response, 429, "rate_limited", "try again")
        assert 1 <= int(response["Retry-After"]) <= 61
    assert_nothing_started(fake_dispatch)
    # Another address is not blocked.
    response = post_execute(client, HTTP_AUTHORIZATION=f"Bearer {api_key}", REMOTE_ADDR="192.0.2.77")
    assert response.status_code == 200, response.content


def test_missing_header_does_not_count_as_a_failed_guess(client, fake_dispatch, api_key, settings, address):
    settings.ISOL8_AUTH_FAILURES_PER_MINUTE = 2
    for _ in range(3):
        assert post_execute(client, REMOTE_ADDR=address).status_code == 401
    response = post_execute(client, HTTP_AUTHORIZATION=f"Bearer {api_key}", REMOTE_ADDR=address)
    assert response.status_code == 200, response.content


# --------------------------------------------------------- the key routes (master)


def test_master_creates_lists_and_revokes_a_tenant_key(master, tenant):
    created = master.post("/auth/keys", {"name": "ci", "tenantId": tenant.slug, "ttlMs": 60_000}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["key"].startswith("isol8_") and body["keyPrefix"] == body["key"][:10] + "..."
    assert body["tenantId"] == tenant.slug and body["expiresAt"].endswith("Z")
    api = client_for(body["key"])
    assert api.get("/sessions").status_code == 200
    listed = master.get("/auth/keys", {"tenantId": tenant.slug}).json()["keys"]
    assert [k["id"] for k in listed] == [body["id"]]
    assert body["key"] not in str(listed)
    revoked = master.delete(f"/auth/keys/{body['id']}")
    assert revoked.status_code == 200 and revoked.json() == {"ok": True, "id": body["id"]}
    assert_error(api.get("/sessions"), 401, "unauthorized")


def test_master_login_gives_a_short_lived_key(master, tenant):
    response = master.post("/auth/login", {"tenantId": tenant.slug, "ttlMs": 1000}, format="json")
    assert response.status_code == 200, response.content
    token = response.json()["token"]
    assert client_for(token).get("/sessions").status_code == 200
    assert ApiKey.objects.get(pk=response.json()["keyId"]).tenant == tenant


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "mentions"),
    [
        ("post", "/auth/keys", {}, 400, "validation_error", "name"),
        ("post", "/auth/keys", {"name": "   "}, 400, "validation_error", "name"),
        ("post", "/auth/keys", {"name": 5}, 400, "validation_error", "name"),
        ("post", "/auth/keys", {"name": "x", "ttlMs": 0}, 400, "validation_error", "ttlMs"),
        ("post", "/auth/keys", {"name": "x", "ttlMs": "soon"}, 400, "validation_error", "ttlMs"),
        ("post", "/auth/keys", {"name": "x", "admin": True}, 400, "validation_error", "admin"),
        ("post", "/auth/keys", ["name"], 400, "validation_error", "JSON object"),
        ("post", "/auth/keys", {"name": "x", "tenantId": "no-such-tenant"}, 404, "not_found", "no-such-tenant"),
        ("get", "/auth/keys?tenantId=no-such-tenant", None, 404, "not_found", "no-such-tenant"),
        ("post", "/auth/login", {"tenantId": "no-such-tenant"}, 404, "not_found", "no-such-tenant"),
        ("post", "/auth/login", {"ttlMs": -5}, 400, "validation_error", "ttlMs"),
        ("delete", f"/auth/keys/{uuid.uuid4()}", None, 404, "not_found", "Key"),
        ("delete", "/auth/keys/not-a-uuid", None, 404, "not_found", "Key"),
    ],
)
def test_key_routes_refuse_bad_input(master, tenant, method, path, body, status, code, mentions):
    before = ApiKey.objects.count()
    response = getattr(master, method)(path, body, format="json")
    assert_error(response, status, code, mentions)
    assert ApiKey.objects.count() == before
