"""isol8's master-only routes: /auth/keys, /auth/login, /cleanup (issue 5, point 4)."""

from __future__ import annotations

import time

import pytest

from sandbox import containers, dockerapi, images
from tenants.models import ApiKey
from tests.conftest import run

pytestmark = pytest.mark.stack


@pytest.fixture
def master(stack):
    with stack.client(stack.env["ISOL8_API_KEY"]) as client:
        yield client


def test_create_list_use_and_revoke_a_key(master, stack, tenant):
    created = master.post("/auth/keys", json={"name": "ci", "tenantId": tenant.slug, "ttlMs": 3_600_000})
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith("isol8_") and body["keyPrefix"] == body["key"][:10] + "..."
    assert body["tenantId"] == tenant.slug and body["expiresAt"]
    assert ApiKey.objects.get(pk=body["id"]).tenant == tenant  # the same rows the admin shows
    listed = master.get("/auth/keys", params={"tenantId": tenant.slug}).json()["keys"]
    assert [k["id"] for k in listed] == [body["id"]]
    assert "key" not in listed[0] and listed[0]["revoked"] is False
    with stack.client(body["key"]) as api:
        assert run(api, {"runtime": "bash", "code": "echo yes"}).json()["stdout"] == "yes"
        assert master.delete(f"/auth/keys/{body['id']}").json() == {"ok": True, "id": body["id"]}
        assert run(api, {"runtime": "bash", "code": "echo no"}).status_code == 401
    assert master.delete("/auth/keys/00000000-0000-0000-0000-000000000000").status_code == 404


def test_login_returns_a_working_token(master, stack, tenant):
    body = master.post("/auth/login", json={"tenantId": tenant.slug}).json()
    assert body["token"].startswith("isol8_") and body["keyId"] and body["expiresAt"]
    with stack.client(body["token"]) as api:
        assert run(api, {"runtime": "bash", "code": "echo in"}).status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [({"tenantId": "no-such-tenant", "name": "x"}, 404), ({"tenantId": "default"}, 400),
     ({"name": "x", "ttlMs": -5}, 400), ({"name": "x", "extra": 1}, 400), ({"name": 7}, 400)],
)
def test_bad_key_requests(master, body, status):
    response = master.post("/auth/keys", json=body)
    assert response.status_code == status
    assert "code" in response.json()


def test_tenant_key_gets_403_on_master_routes(api):
    for method, path in [("POST", "/auth/keys"), ("GET", "/auth/keys"), ("DELETE", "/auth/keys/x"),
                         ("POST", "/auth/login"), ("POST", "/cleanup")]:
        response = api.request(method, path, json={"name": "x"} if method == "POST" else None)
        assert response.status_code == 403, (method, path)
        assert response.json()["code"] == "forbidden"


def test_cleanup_removes_idle_sessions_and_leaked_containers_but_no_images(master, api, stack):
    run(api, {"runtime": "bash", "code": "true"}, sessionId="idle-one")
    leaked = dockerapi.client().containers.create(
        images.image_name("bash"), ["sleep", "600"],
        labels={"isol8.managed": "true", "isol8.host": stack.env["ISOL8_WORKER_HOST"]},
        network_mode="none",
    )
    leaked.start()
    time.sleep(3.5)  # younger containers are spared (ISOL8_ORPHAN_MIN_AGE=3 in tests)
    images_before = {i.id for i in dockerapi.client().images.list()}
    # The worker's own periodic sweep removes orphans of that age too and may come first.
    swept_already = not containers.container_running(leaked.id)
    response = master.post("/cleanup")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and body["sessions"]["removed"] >= 1
    assert (body["containers"]["removed"] >= 1 or swept_already) and body["containers"]["unanswered"] == 0
    assert not containers.container_running(leaked.id)
    assert api.get("/sessions").json()["sessions"] == []
    assert {i.id for i in dockerapi.client().images.list()} >= images_before
