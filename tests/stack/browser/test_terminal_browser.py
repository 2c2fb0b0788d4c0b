"""The admin's live terminal into a session, in a real browser (issue 14, point 6).

The page's own JavaScript opens GET /execute/ws with a session token (a
browser's WebSocket sends no Authorization header) and xterm.js draws what the
shell on the sandbox's pseudo-terminal writes; the test types into it as a
user would.
"""

from __future__ import annotations

from typing import Any

import pytest

from executions.models import Execution
from sessions_app.models import Session
from tests.conftest import one_mode, run
from tests.stack.browser.conftest import assert_styled, screenshot

pytestmark = [pytest.mark.stack, pytest.mark.browser, one_mode]


def rows(page: Any) -> str:
    """What the terminal shows (xterm.js draws its rows as DOM text)."""
    return str(page.inner_text(".xterm-rows"))


def test_a_staff_user_types_into_a_live_terminal_of_a_session(admin_page, stack, api_key):
    with stack.client(api_key) as api:
        run(api, {"runtime": "python", "code": "open('note.txt', 'w').write('from the api')"}, sessionId="term-s")
        session = Session.objects.get(session_id="term-s", state="active")
        admin_page.goto(f"{stack.url}/admin/sessions_app/session/{session.pk}/change/")
        admin_page.click("text=Open a live terminal")
        admin_page.wait_for_selector("#isol8-terminal[data-state=connected]", timeout=30_000)
        assert_styled(admin_page)
        admin_page.wait_for_function("() => document.querySelector('.xterm-rows').innerText.includes('$')",
                                     timeout=30_000)
        admin_page.click("#isol8-terminal")
        admin_page.keyboard.type("cat note.txt; echo; echo $((6*7)); tty\n")
        admin_page.wait_for_function(
            "() => /\\b42\\b/.test(document.querySelector('.xterm-rows').innerText)", timeout=30_000
        )
        shown = rows(admin_page)
        assert "from the api" in shown and "/dev/pts/" in shown, shown
        screenshot(admin_page, "admin-session-terminal")
        admin_page.keyboard.type("exit\n")
        admin_page.wait_for_selector("#isol8-terminal[data-state=ended]", timeout=30_000)
        assert "exit code 0" in admin_page.inner_text("#isol8-terminal-state")
        # The terminal was an execution of the session like any other, in its history.
        shell = Execution.objects.filter(session=session, cmd="bash -i").get()
        assert shell.status == "ok" and shell.request.get("tty") is True
        api.delete("/session/term-s")


def test_the_terminal_of_a_stopped_session_says_so(admin_page, stack, api_key):
    with stack.client(api_key) as api:
        run(api, {"runtime": "bash", "code": "true"}, sessionId="term-gone")
        session = Session.objects.get(session_id="term-gone", state="active")
        api.delete("/session/term-gone")
    admin_page.goto(f"{stack.url}/admin/sessions_app/session/{session.pk}/terminal/")
    assert admin_page.locator("#isol8-terminal").count() == 0
    assert "no container to open a terminal in" in admin_page.inner_text("#isol8-terminal-state")
