"""GET /docs in a real browser (issue 17): Swagger UI draws every route from /openapi.json, nothing from outside."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import one_mode
from tests.stack.browser.conftest import screenshot

pytestmark = [pytest.mark.stack, pytest.mark.browser, one_mode]

OPERATIONS = 21


def test_the_docs_page_draws_every_route_with_its_own_assets_and_can_call_one(page, stack):
    requested: list[str] = []
    failed: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))

    response = page.goto(f"{stack.url}/docs")
    assert response.status == 200
    page.wait_for_selector(".opblock", timeout=30_000)
    assert page.locator(".opblock").count() == OPERATIONS
    assert "isol8" in page.inner_text(".info .title")
    screenshot(page, "docs")

    # Try it out on GET /health: the page calls the live server and shows its answer.
    health = page.locator(".opblock-get", has=page.locator("[data-path='/health']"))
    health.locator(".opblock-summary").click()
    health.locator(".try-out__btn").click()
    health.locator(".execute").click()
    status = health.locator(".live-responses-table tbody .response-col_status")
    status.wait_for(timeout=30_000)
    assert status.inner_text().strip() == "200"
    screenshot(page, "docs-health-tried")

    hosts = {urlsplit(url).netloc for url in requested if not url.startswith(("data:", "blob:"))}
    assert hosts == {urlsplit(stack.url).netloc}, hosts  # no CDN, no call home
    assert failed == [] and errors == [], (failed, errors)
    assert any("/static/drf_spectacular_sidecar/swagger-ui-dist/" in url for url in requested), requested


def test_the_document_is_public_json(page: Any, stack):
    response = page.goto(f"{stack.url}/openapi.json")
    assert response.status == 200 and response.headers["content-type"].startswith("application/")
    assert '"openapi"' in page.inner_text("body")
