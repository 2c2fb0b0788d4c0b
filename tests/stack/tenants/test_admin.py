"""The Django admin: a tenant and key made there can execute; revoking there locks the key out."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages

from tenants.models import ApiKey, Tenant
from tests.conftest import run

pytestmark = pytest.mark.stack


@pytest.fixture
def admin_client(client, transactional_db):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


def test_tenant_and_key_made_in_the_admin_execute_and_revocation_locks_out(admin_client, stack):
    response = admin_client.post("/admin/tenants/tenant/add/", {
        "slug": "acme", "name": "Acme", "is_active": "on", "max_concurrent": 5, "max_per_minute": 120,
        "max_sessions": 20, "max_timeout_ms": 300000, "max_memory": 2 * 1024**3, "max_cpu": 2,
        "max_pids": 256, "max_output_size": 8 * 1024 * 1024, "allowed_runtimes": '["python", "bash"]',
        "allowed_networks": '["none"]', "egress_hosts": "[]", "max_egress_connections": 64,
        "max_egress_bytes": 256 * 1024**2, "egress_bytes_per_second": 0, "max_egress_open": 32,
        "api_keys-TOTAL_FORMS": 0, "api_keys-INITIAL_FORMS": 0,
    })
    assert response.status_code == 302, response.content[:2000]
    tenant = Tenant.objects.get(slug="acme")

    response = admin_client.post("/admin/tenants/apikey/add/", {"tenant": tenant.pk, "name": "ci"}, follow=True)
    texts = [str(m) for m in get_messages(response.wsgi_request)]
    key = next(re.search(r"(isol8_[0-9a-f]{64})", t).group(1) for t in texts if "isol8_" in t)
    stored = ApiKey.objects.get(tenant=tenant)
    assert stored.digest != key and key not in stored.prefix  # shown once, stored as a digest

    with stack.client(key) as api:
        assert run(api, {"runtime": "python", "code": "print('admin')"}).json()["stdout"] == "admin"
        response = admin_client.post("/admin/tenants/apikey/", {
            "action": "revoke_keys", "_selected_action": [str(stored.pk)],
        }, follow=True)
        assert any("Revoked 1" in str(m) for m in get_messages(response.wsgi_request))
        refused = run(api, {"runtime": "python", "code": "print('admin')"})
        assert refused.status_code == 401
        assert refused.json()["error"] == "Invalid API key"


def test_admin_pages_render(admin_client, stack, api_key):
    with stack.client(api_key) as api:
        execution_id = run(api, {"runtime": "bash", "code": "echo listed"}).json()["executionId"]
        run(api, {"runtime": "bash", "code": "true"}, sessionId="admin-view")
    for path in ["/admin/", "/admin/tenants/tenant/", "/admin/tenants/apikey/", "/admin/executions/execution/",
                 f"/admin/executions/execution/{execution_id}/change/", "/admin/sessions_app/session/",
                 "/admin/executions/execution/?status__exact=ok"]:
        assert admin_client.get(path).status_code == 200, path
