"""Stream tokens: how a browser's EventSource reads a tenant's stream without its API key (issue 12)."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import pytest
from django.core import signing
from httpx_sse import connect_sse

from tenants.models import ApiKey
from tenants.services import apikey_revoke
from tenants.tokens import TokenInvalidError, execution_scope, stream_token_mint, stream_token_read
from tests.conftest import make_key, one_mode, run

SLOW = {"runtime": "python", "code": "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)"}


def mint(api, execution_id):
    response = api.post(f"/executions/{execution_id}/token")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.stack
@one_mode
def test_a_token_reads_its_execution_stream_without_any_header(stack, api):
    with api.stream("POST", "/execute/stream", json={"request": SLOW}) as response:
        execution_id = response.headers["X-Execution-Id"]
        minted = mint(api, execution_id)
        assert minted["eventsUrl"] == f"/executions/{execution_id}/events?{urlencode({'token': minted['token']})}"
        assert minted["expiresAt"].endswith("Z")
        with stack.client() as browser_like, connect_sse(browser_like, "GET", minted["eventsUrl"]) as source:
            events = [sse.json() for sse in source.iter_sse()]
        response.read()
    assert "".join(e["data"] for e in events if e["type"] == "stdout") == "0\n1\n2\n"
    assert events[-1]["type"] == "exit"


@pytest.mark.stack
@one_mode
def test_tokens_are_refused_for_other_executions_other_routes_and_after_revocation(stack, tenant):
    key = make_key(tenant)
    with stack.client(key) as api:
        first = run(api, {"runtime": "bash", "code": "echo a"}).json()["executionId"]
        second = run(api, {"runtime": "bash", "code": "echo b"}).json()["executionId"]
        token = mint(api, first)["token"]
    with stack.client() as anonymous:
        assert anonymous.get(f"/executions/{first}/events", params={"token": token}).status_code == 200
        refused = anonymous.get(f"/executions/{second}/events", params={"token": token})
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
        # A token is not a key anywhere else, and a key is not a token.
        assert anonymous.get(f"/executions/{first}", params={"token": token}).status_code == 401
        assert anonymous.get(f"/executions/{first}/events", params={"token": key}).status_code == 401
        assert anonymous.get(f"/executions/{first}/events", params={"token": "x" * 40}).status_code == 401
        apikey_revoke(api_key=ApiKey.objects.get(tenant=tenant))
        revoked = anonymous.get(f"/executions/{first}/events", params={"token": token})
        assert revoked.status_code == 401 and "expired" in revoked.json()["error"]


@pytest.mark.stack
@one_mode
def test_a_tenant_cannot_mint_a_token_for_another_tenants_execution(stack, api):
    execution_id = run(api, {"runtime": "bash", "code": "echo mine"}).json()["executionId"]
    with stack.client(stack.env["ISOL8_API_KEY"]) as other:
        assert other.post(f"/executions/{execution_id}/token").status_code == 404


def test_a_token_expires_after_its_ttl(tenant, settings, monkeypatch):
    settings.ISOL8_STREAM_TOKEN_TTL = 5
    api_key = ApiKey.objects.get(pk=ApiKey.objects.create(tenant=tenant, prefix="p", digest="d" * 64).pk)
    scope = execution_scope("abc")
    token = stream_token_mint(tenant=tenant, api_key=api_key, scope=scope).token
    assert stream_token_read(token=token, scope=scope)[0] == tenant
    with pytest.raises(TokenInvalidError):
        stream_token_read(token=token, scope=execution_scope("other"))
    later = time.time() + 6
    monkeypatch.setattr(signing.time, "time", lambda: later)
    with pytest.raises(TokenInvalidError):
        stream_token_read(token=token, scope=scope)
