"""The admin and the stream routes in a real browser (issue 12, points 3 and 4)."""

from __future__ import annotations

import re
import threading
import uuid
from typing import Any

import pytest

from executions.models import Execution
from tenants.models import Tenant
from tests.conftest import make_key, one_mode, run
from tests.stack.browser.conftest import assert_styled, screenshot

pytestmark = [pytest.mark.stack, pytest.mark.browser, one_mode]

TICKS = (
    "import time\n"
    "for i in range(8):\n"
    "    print(f'tick {i}', flush=True)\n"
    "    time.sleep(0.5)\n"
)


def test_every_admin_page_is_styled(page, admin_page, stack, api_key):
    with stack.client(api_key) as api:
        execution_id = run(api, {"runtime": "bash", "code": "echo styled; echo oops >&2"}).json()["executionId"]
        run(api, {"runtime": "bash", "code": "true"}, sessionId="browser-view")
    tenant = Execution.objects.get(pk=execution_id).tenant
    pages = {
        "admin-index": "/admin/",
        "admin-tenants": "/admin/tenants/tenant/",
        "admin-tenant-change": f"/admin/tenants/tenant/{tenant.pk}/change/",
        "admin-keys": "/admin/tenants/apikey/",
        "admin-sessions": "/admin/sessions_app/session/",
        "admin-executions": "/admin/executions/execution/",
        "admin-execution-finished": f"/admin/executions/execution/{execution_id}/change/",
    }
    for name, path in pages.items():
        response = admin_page.goto(stack.url + path)
        assert response.status == 200, path
        assert_styled(admin_page)
        screenshot(admin_page, name)
    # The finished execution's page shows its whole output from the history.
    assert admin_page.inner_text("#live-stdout") == "styled\n"
    assert admin_page.inner_text("#live-stderr") == "oops\n"
    assert "exit code 0" in admin_page.inner_text("#live-state")


def test_the_login_page_is_styled_before_anyone_logs_in(page, stack):
    page.goto(f"{stack.url}/admin/login/")
    assert_styled(page)
    screenshot(page, "admin-login")


def test_a_tenant_and_a_key_made_through_the_admin_forms_can_run_code(admin_page, stack):
    slug = f"browser-{uuid.uuid4().hex[:8]}"
    admin_page.goto(f"{stack.url}/admin/tenants/tenant/add/")
    admin_page.fill("#id_slug", slug)
    admin_page.fill("#id_name", "Made in a browser")
    admin_page.fill("#id_max_per_minute", "")  # blank: no per-minute limit
    screenshot(admin_page, "admin-tenant-add")
    admin_page.click("input[name=_save]")
    admin_page.wait_for_load_state()
    screenshot(admin_page, "admin-tenant-saved")
    assert admin_page.locator(".errornote").count() == 0, admin_page.inner_text("#content")
    assert "was added successfully" in admin_page.inner_text(".messagelist")
    tenant = Tenant.objects.get(slug=slug)
    assert tenant.max_per_minute is None and tenant.max_concurrent == 5

    admin_page.goto(f"{stack.url}/admin/tenants/apikey/add/")
    admin_page.select_option("#id_tenant", str(tenant.pk))
    admin_page.fill("#id_name", "from the browser")
    admin_page.click("input[name=_save]")
    message = admin_page.inner_text(".messagelist")
    screenshot(admin_page, "admin-key-created")
    key = re.search(r"isol8_[0-9a-f]{64}", message)
    assert key, message
    with stack.client(key.group(0)) as api:
        result = run(api, {"runtime": "python", "code": "print('hello from the admin')"}).json()
    assert result["stdout"] == "hello from the admin"


def _stream_in_background(stack: Any, key: str, request: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start a streamed run and keep reading it in a thread; returns once its id is known."""
    seen: dict[str, Any] = {}
    ready = threading.Event()

    def read() -> None:
        with stack.client(key) as api, api.stream("POST", "/execute/stream", json={"request": request}) as response:
            seen["id"] = response.headers["X-Execution-Id"]
            ready.set()
            seen["body"] = response.read().decode()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert ready.wait(30)
    return thread, seen


def test_the_execution_page_follows_a_running_execution_live(admin_page, stack, api_key):
    thread, seen = _stream_in_background(stack, api_key, {"runtime": "python", "code": TICKS})
    admin_page.goto(f"{stack.url}/admin/executions/execution/{seen['id']}/change/")
    assert_styled(admin_page)
    admin_page.wait_for_function("document.getElementById('live-stdout').textContent.includes('tick 1')")
    # Live: the page shows early lines while the run is still going.
    assert Execution.objects.get(pk=seen["id"]).status == "running"
    assert "tick 7" not in admin_page.inner_text("#live-stdout")
    screenshot(admin_page, "admin-execution-live")
    admin_page.wait_for_function("document.getElementById('live-output').dataset.finished === 'true'", timeout=30000)
    assert admin_page.inner_text("#live-stdout") == "".join(f"tick {i}\n" for i in range(8))
    assert admin_page.inner_text("#live-state") == "finished, exit code 0"
    screenshot(admin_page, "admin-execution-live-finished")
    thread.join(30)


def test_the_admin_event_stream_needs_a_staff_session(stack, api_key):
    with stack.client(api_key) as api:
        execution_id = run(api, {"runtime": "bash", "code": "echo secret"}).json()["executionId"]
    with stack.client(api_key) as api:
        # An API key is not an admin session: the admin sends it to its login page.
        response = api.get(f"/admin/executions/execution/{execution_id}/events/")
        assert response.status_code == 302 and "/admin/login/" in response.headers["location"]


def test_an_event_source_in_a_browser_reads_a_live_run_with_a_stream_token(page, stack, tenant):
    key = make_key(tenant)
    thread, seen = _stream_in_background(stack, key, {"runtime": "python", "code": TICKS})
    with stack.client(key) as api:
        events_url = api.post(f"/executions/{seen['id']}/token").json()["eventsUrl"]
    page.goto(f"{stack.url}/admin/login/")  # any page of the service: the stream is same-origin
    received = page.evaluate(
        """url => new Promise((resolve, reject) => {
            const got = [];
            const source = new EventSource(url);
            for (const kind of ["stdout", "stderr", "error"]) {
                source.addEventListener(kind, m => {
                    if (m.data) got.push([kind, JSON.parse(m.data).data, Date.now()]);
                });
            }
            source.addEventListener("exit", m => { got.push(["exit", JSON.parse(m.data).data, Date.now()]);
                                                     source.close(); resolve(got); });
            setTimeout(() => reject(new Error("no exit after 30 s: " + JSON.stringify(got))), 30000);
        })""",
        events_url,
    )
    stdout = [item for item in received if item[0] == "stdout"]
    assert "".join(item[1] for item in stdout) == "".join(f"tick {i}\n" for i in range(8))
    assert received[-1][:2] == ["exit", "0"]
    # Live, not at the end: the first line came well before the exit.
    assert received[-1][2] - stdout[0][2] > 2000
    thread.join(30)


def test_a_filtered_runs_network_log_and_the_tenants_egress_show_in_the_admin(admin_page, stack, tenant):
    tenant.allowed_networks = ["none", "filtered"]
    tenant.save()
    code = (
        "import urllib.request\n"
        "for url in ('https://pypi.org/simple/six/', 'https://registry.npmjs.org/'):\n"
        "    try:\n"
        "        urllib.request.urlopen(url, timeout=20).read()\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__)\n"
    )
    options = {"network": "filtered", "networkFilter": {"whitelist": [r"^pypi\.org$"]}}
    with stack.client(make_key(tenant)) as api:
        execution_id = run(api, {"runtime": "python", "code": code}, options).json()["executionId"]
    admin_page.goto(f"{stack.url}/admin/executions/execution/{execution_id}/change/")
    assert_styled(admin_page)
    rows = admin_page.locator("table.isol8-network-log tbody tr")
    assert rows.count() == 2
    first, second = rows.nth(0).inner_text(), rows.nth(1).inner_text()
    assert "pypi.org:443" in first and "ALLOW" in first
    assert "registry.npmjs.org:443" in second and "BLOCK" in second and "not_whitelisted" in second
    screenshot(admin_page, "admin-execution-network-log")
    admin_page.goto(f"{stack.url}/admin/tenants/tenant/{tenant.pk}/change/")
    assert_styled(admin_page)
    text = admin_page.inner_text("body")
    assert "2 connections (1 allowed, 1 blocked)" in text, text[-2000:]
    screenshot(admin_page, "admin-tenant-egress")


def test_a_stateful_cells_page_shows_its_value_exception_and_plot(admin_page, stack, api_key):
    if stack.mode != "launcher":
        pytest.skip("stateful sessions run in launcher mode")
    code = ("import matplotlib.pyplot as plt\nplt.figure(figsize=(3, 2), dpi=40)\nplt.plot([1, 3, 2])\n"
            "plt.show()\n6 * 7")
    with stack.client(api_key) as api:
        plotted = run(api, {"runtime": "python", "code": code}, sessionId="admin-nb", stateful=True).json()
        failed = run(api, {"runtime": "python", "code": "{}['k']"}, sessionId="admin-nb").json()
    admin_page.goto(f"{stack.url}/admin/executions/execution/{plotted['executionId']}/change/")
    assert_styled(admin_page)
    text = admin_page.inner_text("body")
    assert "value: 42; 1 display(s); state lost: no" in text, text[-2000:]
    image = admin_page.locator("img.isol8-display")
    assert image.count() == 1
    assert image.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]") == [True, 120, 80]
    screenshot(admin_page, "admin-execution-stateful-cell")
    admin_page.goto(f"{stack.url}/admin/executions/execution/{failed['executionId']}/change/")
    assert "exception: KeyError: 'k'" in admin_page.inner_text("body")
    admin_page.goto(f"{stack.url}/admin/sessions_app/session/?stateful__exact=1")
    assert_styled(admin_page)
    assert "admin-nb" in admin_page.inner_text("#result_list")
