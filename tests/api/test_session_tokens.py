"""Session tokens: POST /session/{id}/token, and GET /execute/ws?token= bound to that session.

A browser's WebSocket cannot send Authorization; the token stands in for the
key on that one route, for that one session, and dies with its key (or, for
the admin's terminal, with its staff user's permission).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone

from executions.models import Execution
from sessions_app.models import Session
from tenants.models import ApiKey
from tenants.tokens import session_scope, stream_token_mint
from tests.api.conftest import assert_error, assert_sentence, make_session
from tests.api.test_websocket import PY, TIMEOUT, Socket, talk


def mint(api, session_id: str = "s1") -> str:
    response = api.post(f"/session/{session_id}/token")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["wsUrl"].startswith("/execute/ws?token=") and body["expiresAt"].endswith("Z")
    assert parse_qs(urlparse(body["wsUrl"]).query)["token"] == [body["token"]]
    return str(body["token"])


async def run_with_token(token: str, message: dict) -> list[dict]:
    ws = Socket(None, query=f"token={token}")
    assert (await ws.connect())["type"] == "websocket.accept"
    await ws.send(message)
    return await ws.until_close()


async def refused_upgrade(token: str, *, key: str | None = None) -> dict:
    ws = Socket(key, query=f"token={token}")
    start = await ws.connect()
    assert start["type"] == "websocket.http.response.start", start
    body = json.loads((await ws.app.receive_output(TIMEOUT))["body"])
    return {"status": start["status"], **body}


def test_a_session_token_runs_in_its_session_of_its_tenant(api, tenant, fake_dispatch):
    token = mint(api, "s1")
    seen: list[dict] = []

    async def scenario() -> None:
        seen.extend(await run_with_token(token, {"type": "execute", "request": PY, "sessionId": "s1"}))

    talk(scenario)
    assert seen[-2:] == [{"type": "exit", "data": "0", "phase": "code"}, {"close": 1000}]
    row = Execution.objects.get()
    assert row.tenant == tenant and row.session is not None and row.session.session_id == "s1"


@pytest.mark.parametrize("session_id", [None, "s2"])
def test_a_session_token_refuses_any_other_session_or_none(api, fake_dispatch, session_id):
    token = mint(api, "s1")
    message: dict = {"type": "execute", "request": PY}
    if session_id is not None:
        message["sessionId"] = session_id
    seen: list[dict] = []

    async def scenario() -> None:
        seen.extend(await run_with_token(token, message))

    talk(scenario)
    error, close = seen
    assert error["type"] == "error" and error["code"] == "forbidden" and error["status"] == 403
    assert "s1" in error["data"]
    assert_sentence(error["data"])
    assert close == {"close": 1000}
    assert fake_dispatch.sent == [] and not Execution.objects.exists()


def test_a_forged_or_execution_token_is_401_on_the_upgrade(api, tenant, fake_dispatch):
    session_token = mint(api, "s1")
    execution_token = stream_token_mint(tenant=tenant, api_key=None, scope="execution:x").token
    answers: list[dict] = []

    async def scenario() -> None:
        answers.append(await refused_upgrade(session_token + "x"))
        answers.append(await refused_upgrade(execution_token))

    talk(scenario)
    assert [(a["status"], a["code"]) for a in answers] == [(401, "unauthorized")] * 2
    assert "not for a session" in answers[1]["error"]


def test_an_authorization_header_wins_over_a_token(api, fake_dispatch):
    token = mint(api, "s1")
    answers: list[dict] = []

    async def scenario() -> None:
        answers.append(await refused_upgrade(token, key="isol8_not-a-key"))

    talk(scenario)
    assert (answers[0]["status"], answers[0]["code"]) == (401, "unauthorized")


def test_a_token_dies_with_its_key(api, api_key, tenant, fake_dispatch):
    token = mint(api, "s1")
    ApiKey.objects.filter(tenant=tenant).update(revoked_at=timezone.now())
    answers: list[dict] = []

    async def scenario() -> None:
        answers.append(await refused_upgrade(token))

    talk(scenario)
    assert answers[0]["status"] == 401


def test_the_master_key_mints_for_the_default_tenant(master, fake_dispatch):
    token = mint(master, "m1")
    seen: list[dict] = []

    async def scenario() -> None:
        seen.extend(await run_with_token(token, {"type": "execute", "request": PY, "sessionId": "m1"}))

    talk(scenario)
    assert seen[-1] == {"close": 1000} and Execution.objects.get().tenant.slug == "default"


def test_a_bad_session_id_is_400_and_a_token_is_no_key(api, client, fake_dispatch):
    assert_error(api.post("/session/bad id!/token"), 400, "validation_error", "sessionId")
    token = mint(api, "s1")
    assert_error(client.get("/sessions", {"token": token}), 401, "unauthorized")
    assert_error(client.post("/session/s1/token", {"token": token}), 401, "unauthorized")


# --------------------------------------------------------- the admin's terminal


def staff_user(*, permitted: bool):
    user = get_user_model().objects.create_user(username=f"op{permitted}", password="pw-for-tests", is_staff=True)
    if permitted:
        # Django makes a model's permissions after migrating; a flushed test database may lack them.
        permission, _ = Permission.objects.get_or_create(
            codename="open_terminal", content_type=ContentType.objects.get_for_model(Session),
            defaults={"name": "Can open a live terminal into a session"},
        )
        user.user_permissions.add(permission)
    return user


def test_a_staff_token_lives_as_long_as_its_users_permission(tenant, fake_dispatch):
    user = staff_user(permitted=True)
    token = stream_token_mint(
        tenant=tenant, api_key=None, scope=session_scope("s1"), staff_user_id=user.pk
    ).token
    seen: list[dict] = []
    answers: list[dict] = []

    async def allowed() -> None:
        seen.extend(await run_with_token(token, {"type": "execute", "request": PY, "sessionId": "s1"}))

    talk(allowed)
    assert seen[-2]["type"] == "exit" and Execution.objects.get().tenant == tenant

    user.user_permissions.clear()

    async def refused() -> None:
        answers.append(await refused_upgrade(token))

    talk(refused)
    assert answers[0]["status"] == 401


def test_the_terminal_page_needs_the_permission_and_a_live_session(client, tenant, fake_dispatch, settings):
    # No collectstatic in this layer: plain static URLs instead of the manifest's hashed ones.
    settings.STORAGES = {**settings.STORAGES,
                         "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    session = make_session(tenant, "s1")
    page = f"/admin/sessions_app/session/{session.pk}/terminal/"
    assert client.get(page).status_code == 302  # not logged in: the admin's login page
    client.force_login(staff_user(permitted=False))
    assert client.get(page).status_code == 403
    client.force_login(staff_user(permitted=True))
    answer = client.get(page)
    assert answer.status_code == 200
    html = answer.content.decode()
    assert 'id="isol8-terminal"' in html and "data-token=" in html and "sessions_app/vendor/xterm/xterm." in html
    session.state = "stopped"
    session.save()
    html = client.get(page).content.decode()
    assert 'id="isol8-terminal"' not in html and "stopped" in html
