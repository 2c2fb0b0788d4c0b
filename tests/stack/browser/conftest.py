"""A real headless browser: the distribution's Chromium driven by Playwright.

Playwright never downloads a browser here: it is pointed at the system's
``chromium`` (Debian's package, installed by ``scripts/bootstrap.sh --dev``).
Screenshots of every page visited are kept under ``var/screenshots/`` as test
artifacts.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

SCREENSHOTS = ROOT / "var" / "screenshots"
CHROMIUM_FLAGS = [
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    # This machine's network is closed: no update checks, sync or other calls home.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STAFF_PASSWORD = "browser-test-password"


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is not installed: run `scripts/bootstrap.sh --dev` (it installs Debian's chromium)")


@pytest.fixture
def browser(stack: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh Chromium per test.

    Per test, not per session: Playwright's sync API runs an event loop in the
    test thread for as long as it is started, which would break every later
    test that calls ``asyncio.run``. While it runs, Django must also be told
    that the tests' own ORM calls are fine (the stack, already started, does
    not inherit this).
    """
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def staff_user(transactional_db: Any) -> Any:
    from django.contrib.auth import get_user_model

    name = f"staff-{os.urandom(3).hex()}"
    return get_user_model().objects.create_superuser(name, f"{name}@example.com", STAFF_PASSWORD)


@pytest.fixture
def admin_page(page: Any, stack: Any, staff_user: Any) -> Any:
    """A page logged in to the admin through its login form."""
    page.goto(f"{stack.url}/admin/login/?next=/admin/")
    page.fill("#id_username", staff_user.username)
    page.fill("#id_password", STAFF_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{stack.url}/admin/")
    return page


def screenshot(page: Any, name: str) -> Path:
    path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def assert_styled(page: Any) -> None:
    """The admin stylesheet really loaded: its rules are there and the header is painted by it."""
    loaded = page.evaluate(
        "() => [...document.styleSheets].some(s => s.href && s.href.includes('/static/admin/css/base.')"
        " && s.cssRules.length > 50)"
    )
    assert loaded, "base.css did not load"
    header = page.evaluate("() => getComputedStyle(document.getElementById('header')).backgroundColor")
    assert header not in ("", "rgba(0, 0, 0, 0)", "transparent"), header
    font = page.evaluate("() => getComputedStyle(document.body).fontFamily")
    assert "Times" not in font, font  # the browser's default serif means no stylesheet
