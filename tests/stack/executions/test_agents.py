"""Issue 20 on the real stack: webhooks to a loopback receiver, batches, idempotency keys under concurrent retries."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from executions.models import Execution, WebhookAttempt
from tests.conftest import free_port, make_key, one_mode, run

pytestmark = [pytest.mark.stack, one_mode]


class Receiver(ThreadingHTTPServer):
    """A webhook receiver: answers 500 to the first ``failures`` deliveries, then 200; keeps what it got."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[tuple[dict[str, str], bytes, float]] = []
        super().__init__(("127.0.0.1", free_port()), ReceiverHandler)


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((dict(self.headers), body, time.monotonic()))
        status = 500 if len(self.server.received) <= self.server.failures else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(failures=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def hook_tenant(tenant: Any) -> tuple[Any, str]:
    from tenants.services import tenant_rotate_webhook_secret

    tenant.callback_hosts = ["localhost", "*.hooks.example", "10.1.2.3", "169.254.169.254"]
    tenant.max_concurrent = None
    tenant.max_per_minute = None
    tenant.save()
    return tenant, tenant_rotate_webhook_secret(tenant=tenant)


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a receiver does (README): recompute the HMAC over "<t>." + body, compare in constant time."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300


def wait_until(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(what)


def test_a_webhook_is_signed_and_retried_after_two_500s(stack, hook_tenant, receiver):
    tenant, secret = hook_tenant
    url = f"http://localhost:{receiver.server_address[1]}/hook?from=isol8"
    with stack.client(make_key(tenant)) as api:
        answer = run(api, {"runtime": "python", "code": "print(6 * 7)"}, callbackUrl=url)
    assert answer.status_code == 200, answer.text
    execution_id = answer.json()["executionId"]
    wait_until(lambda: len(receiver.received) >= 3, 30, f"3 deliveries expected, got {len(receiver.received)}")
    time.sleep(1.5)  # a fourth would come within the backoff if the 200 were not taken as delivered
    assert len(receiver.received) == 3
    for n, (headers, body, _) in enumerate(receiver.received, start=1):
        assert verify(secret, headers["Isol8-Signature"], body), headers
        assert headers["Isol8-Execution-Id"] == execution_id and headers["Isol8-Delivery-Attempt"] == str(n)
        result = json.loads(body)
        assert (result["stdout"], result["exitCode"], result["executionId"]) == ("42", 0, execution_id)
    assert not verify("whsec_wrong", receiver.received[0][0]["Isol8-Signature"], receiver.received[0][1])
    gaps = [b[2] - a[2] for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
    assert gaps[1] > gaps[0] * 1.5, gaps  # exponential backoff (0.5 s, then 1 s in tests)
    attempts = list(WebhookAttempt.objects.filter(execution_id=execution_id).order_by("attempt"))
    assert [(a.attempt, a.status_code, a.delivered) for a in attempts] == [(1, 500, False), (2, 500, False),
                                                                           (3, 200, True)]


@pytest.mark.parametrize(("url", "why"), [
    ("http://10.1.2.3/hook", "resolves to an address"),  # private, even though the tenant lists it
    ("http://169.254.169.254/latest/meta-data", "resolves to an address"),  # the metadata address
    ("http://elsewhere.example/hook", "not one of this tenant's callback hosts"),
    ("ftp://localhost/hook", "http:// or https://"),
])
def test_a_callback_off_the_list_or_to_a_private_address_is_refused_at_submission(stack, hook_tenant, url, why):
    tenant, _ = hook_tenant
    with stack.client(make_key(tenant)) as api:
        answer = run(api, {"runtime": "python", "code": "print(1)"}, callbackUrl=url)
        assert answer.status_code in (400, 403) and why in answer.json()["error"], answer.text
        assert api.get("/executions").json()["results"] == []  # nothing ran


def test_a_batch_of_20_mixed_runs_makes_20_records_with_their_outcomes(stack, hook_tenant):
    tenant, _ = hook_tenant
    kinds = [
        ({"runtime": "python", "code": "print('py')"}, "ok", 0, "py"),
        ({"runtime": "bash", "code": "echo sh; exit 3"}, "ok", 3, "sh"),
        ({"runtime": "node", "code": "console.log('js')"}, "ok", 0, "js"),
        ({"runtime": "python", "code": "import time; time.sleep(5)", "timeoutMs": 300}, "timeout", 137, ""),
        ({"runtime": "python", "code": "raise SystemExit(9)"}, "ok", 9, ""),
    ]
    requests = [{"request": kinds[n % len(kinds)][0]} for n in range(20)]
    with stack.client(make_key(tenant)) as api:
        answer = api.post("/execute/batch", json={"requests": requests})
        assert answer.status_code == 200, answer.text
        batch = answer.json()
        assert (batch["started"], batch["refused"], len(batch["items"])) == (20, 0, 20)
        ids = [item["executionId"] for item in batch["items"]]

        def listed() -> list[dict[str, Any]]:
            return list(api.get("/executions", params={"batch": batch["batchId"]}).json()["results"])

        wait_until(lambda: all(r["status"] not in ("queued", "running") for r in listed()) and len(listed()) == 20,
                   120, "the batch did not finish")
        by_id = {r["executionId"]: r for r in listed()}
    assert set(by_id) == set(ids)
    for n, execution_id in enumerate(ids):
        _, status, code, stdout = kinds[n % len(kinds)]
        record = by_id[execution_id]
        assert (record["status"], record["exitCode"], record["stdout"], record["batchId"]) == (
            status, code, stdout, batch["batchId"]), (n, record)


def test_an_invalid_batch_item_gets_its_error_and_the_others_run(stack, hook_tenant):
    tenant, _ = hook_tenant
    body = {"requests": [{"request": {"runtime": "python", "code": "print(1)"}},
                         {"request": {"runtime": "cobol", "code": "x"}},
                         {"request": {"runtime": "python", "code": "print(2)"}, "options": {"network": "host"}}]}
    with stack.client(make_key(tenant)) as api:
        answer = api.post("/execute/batch", json=body).json()
    first, second, third = answer["items"]
    assert "executionId" in first and (answer["started"], answer["refused"]) == (1, 2)
    assert (second["code"], second["status"]) == ("unsupported_runtime", 400)
    assert (third["code"], third["status"]) == ("policy_denied", 403)
    assert Execution.objects.filter(tenant=tenant).count() == 1


def test_ten_concurrent_retries_with_one_idempotency_key_run_the_code_once(stack, hook_tenant):
    tenant, _ = hook_tenant
    key = make_key(tenant)
    body = {"request": {"runtime": "python", "code": "import time, uuid; time.sleep(0.5); print(uuid.uuid4())"}}
    barrier = threading.Barrier(10)

    def submit(_: int) -> httpx.Response:
        with stack.client(key) as api:
            barrier.wait()
            return api.post("/execute", json=body, headers={"Idempotency-Key": "retry-me-1"})

    with ThreadPoolExecutor(max_workers=10) as threads:
        answers = list(threads.map(submit, range(10)))
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    results = {(a.json()["executionId"], a.json()["stdout"]) for a in answers}
    assert len(results) == 1, results  # one execution, one random uuid printed: the code ran once
    assert Execution.objects.filter(tenant=tenant).count() == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 9
    with stack.client(key) as api:
        # Later, and on the stream route's own key: the same first execution, replayed.
        again = api.post("/execute", json=body, headers={"Idempotency-Key": "retry-me-1"})
        assert again.json()["executionId"] == answers[0].json()["executionId"]
        other = api.post("/execute", json={"request": {"runtime": "python", "code": "print(2)"}},
                         headers={"Idempotency-Key": "retry-me-1"})
        assert other.status_code == 422 and other.json()["code"] == "idempotency_mismatch", other.text
        bad = api.post("/execute", json=body, headers={"Idempotency-Key": "k" * 256})
        assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["error"], bad.text


def test_a_streamed_retry_replays_the_first_stream(stack, hook_tenant):
    tenant, _ = hook_tenant
    body = {"request": {"runtime": "python", "code": "print('once')"}}
    headers = {"Idempotency-Key": "stream-key-1", "Accept": "text/event-stream"}
    with stack.client(make_key(tenant)) as api:
        first = api.post("/execute/stream", json=body, headers=headers)
        second = api.post("/execute/stream", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.headers["X-Execution-Id"] == second.headers["X-Execution-Id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    for stream in (first.text, second.text):
        events = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: ")]
        assert "".join(e["data"] for e in events if e["type"] == "stdout") == "once\n", stream
        assert events[-1]["type"] == "exit", stream
    assert Execution.objects.filter(tenant=tenant).count() == 1


def test_an_idempotent_batch_is_started_once(stack, hook_tenant):
    tenant, _ = hook_tenant
    body = {"requests": [{"request": {"runtime": "bash", "code": "echo a"}}, {"runtime": "bash", "code": "echo b"}]}
    with stack.client(make_key(tenant)) as api:
        first = api.post("/execute/batch", json=body, headers={"Idempotency-Key": "batch-1"}).json()
        second = api.post("/execute/batch", json=body, headers={"Idempotency-Key": "batch-1"})
    assert second.json() == first and second.headers["Idempotent-Replayed"] == "true"
    assert first["started"] == 2 and Execution.objects.filter(tenant=tenant).count() == 2
