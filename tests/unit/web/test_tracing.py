"""isol8_site/tracing.py when tracing is off (the default): no tracer, no exporter, a shared no-op per span."""

from __future__ import annotations

import os
import subprocess
import sys

from isol8_site import tracing
from tests.conftest import ROOT

PROBE = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isol8_site.settings")
import django
django.setup()
from isol8_site import dispatch, logs, tracing
import worker.tasks, executions.services
assert not tracing.configure("probe")
with tracing.span("x", a=1) as current:
    assert current is None
assert tracing.inject() == {}
# redis-py imports OpenTelemetry's API (metrics, trace) when it is installed;
# the SDK's tracer and the exporter are ours to load, and are not.
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter"))))
"""


def test_without_an_endpoint_no_tracer_or_exporter_is_loaded():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_span_is_one_shared_no_op_when_off():
    assert not tracing.enabled()
    assert tracing.span("a") is tracing.span("b", execution_id="x")
    with tracing.continued({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}):
        assert tracing.inject() == {}
