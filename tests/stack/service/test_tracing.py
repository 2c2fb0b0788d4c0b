"""OpenTelemetry on the real stack (issue 17, point 5): one trace from the web request to the sandbox run.

The service exports to an OTLP/HTTP receiver on loopback, written here with
OpenTelemetry's own protobuf definitions: what arrives is what any collector
(Jaeger, Tempo, the OpenTelemetry Collector) would get.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import free_port, one_mode
from tests.stack.service.cluster import private_cluster

pytestmark = [pytest.mark.stack, one_mode]


class Receiver(ThreadingHTTPServer):
    def __init__(self, port: int) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), ReceiverHandler)


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource in request.resource_spans:
                service = next(a.value.string_value for a in resource.resource.attributes
                               if a.key == "service.name")
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        self.server.spans.append({
                            "service": service, "name": span.name, "trace": span.trace_id.hex(),
                            "id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                            "attributes": {a.key: a.value.string_value or a.value.int_value
                                           for a in span.attributes},
                        })
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_one_trace_goes_from_the_request_through_celery_to_the_sandbox(stack, tmp_path, receiver):
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    with private_cluster(tmp_path, stack.env, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                         OTEL_BSP_SCHEDULE_DELAY="200") as cluster:
        with cluster.client() as client:
            answer = client.post("/execute", json={"request": {"runtime": "python", "code": "print(7)"}},
                                 headers={"X-Request-Id": "traced-request-1"})
        assert answer.status_code == 200 and answer.json()["stdout"] == "7", answer.text

        def trace() -> list[dict[str, Any]]:
            with receiver.lock:
                spans = list(receiver.spans)
            root = next((s for s in spans if s["attributes"].get("isol8.request_id") == "traced-request-1"), None)
            return [s for s in spans if root and s["trace"] == root["trace"]]

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not {"sandbox.run", "execution.finish"} <= {s["name"] for s in trace()}:
            time.sleep(0.2)
    spans = {s["name"]: s for s in trace()}
    assert {"HTTP POST", "execution.enqueue", "execution.run", "sandbox.acquire", "sandbox.run",
            "execution.finish"} <= set(spans), sorted(spans)
    assert spans["HTTP POST"]["service"] == "isol8-web" and spans["execution.run"]["service"] == "isol8-worker"
    # Parentage: request -> enqueue -> (Celery) run -> its steps.
    assert spans["execution.enqueue"]["parent"] == spans["HTTP POST"]["id"]
    assert spans["execution.run"]["parent"] == spans["execution.enqueue"]["id"]
    for step in ("sandbox.acquire", "sandbox.run", "execution.finish"):
        assert spans[step]["parent"] == spans["execution.run"]["id"], step
    assert spans["execution.run"]["attributes"]["isol8.execution_id"] == answer.json()["executionId"]
    # Nothing secret in a span: no code, no key.
    everything = repr(receiver.spans)
    assert "print(7)" not in everything and cluster.key not in everything
