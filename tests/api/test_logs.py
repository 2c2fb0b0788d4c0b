"""Structured logs: request ids and one JSON line per request and execution step (issue 17)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from tests.api.conftest import client_for


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """The JSON lines of isol8.request and isol8.execution, formatted as settings.LOGGING formats them."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logging_config: Any = settings.LOGGING
    formatter_config = dict(logging_config["formatters"]["json"])
    factory = formatter_config.pop("()")
    module, _, name = factory.rpartition(".")
    handler.setFormatter(getattr(__import__(module, fromlist=[name]), name)(**formatter_config))
    loggers = [logging.getLogger("isol8.request"), logging.getLogger("isol8.execution")]
    for logger in loggers:
        logger.addHandler(handler)
    yield buffer
    for logger in loggers:
        logger.removeHandler(handler)


def captured(buffer: io.StringIO) -> list[dict[str, Any]]:
    """Every line written so far, each parsed as one JSON object."""
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_a_request_id_is_echoed_or_made(tenant, api_key, fake_dispatch, lines):
    api = client_for(api_key)
    given = api.get("/sessions", HTTP_X_REQUEST_ID="trace-abc.123")
    assert given["X-Request-Id"] == "trace-abc.123"
    made = api.get("/sessions")
    assert len(made["X-Request-Id"]) == 32
    hostile = api.get("/sessions", HTTP_X_REQUEST_ID="bad id\nwith {json}")
    assert hostile["X-Request-Id"] != "bad id\nwith {json}" and len(hostile["X-Request-Id"]) == 32
    logged = [line for line in captured(lines) if line["logger"] == "isol8.request"]
    assert [line["request_id"] for line in logged] == ["trace-abc.123", made["X-Request-Id"], hostile["X-Request-Id"]]
    first = logged[0]
    assert first["event"] == "request" and first["method"] == "GET" and first["path"] == "/sessions"
    assert first["status"] == 200 and first["tenant"] == tenant.slug and first["duration_ms"] >= 0
    assert first["level"] == "INFO" and "time" in first


def test_every_step_of_an_execution_is_one_line_with_its_ids(tenant, api, fake_dispatch, lines):
    response = api.post("/execute", {"request": {"runtime": "python", "code": "print('the-code-body')",
                                                 "stdin": "the-stdin"},
                                     "options": {"secrets": {"TOKEN": "s3cr3t-xyz"}}},
                        format="json", HTTP_X_REQUEST_ID="req-42")
    assert response.status_code == 200
    logged = captured(lines)
    steps = [line for line in logged if line["logger"] == "isol8.execution"]
    assert [line["step"] for line in steps] == ["received", "queued", "started", "finished"]
    execution_ids = {line["execution_id"] for line in steps}
    assert len(execution_ids) == 1
    assert all(line["tenant"] == tenant.slug and line["runtime"] == "python" for line in steps)
    # The fake worker runs inside the request here, so every step carries the request id.
    assert {line["request_id"] for line in steps} == {"req-42"}
    assert steps[-1]["status"] == "ok" and steps[-1]["exit_code"] == 0 and "total_ms" in steps[-1]
    text = json.dumps(logged)
    for leaked in ("the-code-body", "the-stdin", "s3cr3t-xyz", "isol8_"):  # API keys start with isol8_
        assert leaked not in text
