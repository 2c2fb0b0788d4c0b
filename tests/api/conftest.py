"""The API layer's fixtures: DRF's test client on the real URLconf, database and Redis, and a fake dispatch.

Nothing here starts Celery, a worker or Docker. ``isol8_site.dispatch.send`` is
replaced by ``FakeDispatch``, which records every task the web sends and, for
the tasks a test gives it an answer for, plays the worker's part: it claims
and finishes a run through the same services the worker uses, or pushes a
file operation's or a cleanup's answer to the Redis key the web waits on.
The web sends runs from ``transaction.on_commit``, so the fake answers them
only when the request's transaction really commits: a test whose request
must reach dispatch needs a transactional database (the ``tenant`` fixture
gives one).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.conf import settings
from django.test.client import ClientHandler
from rest_framework.test import APIClient

from executions import services
from executions.models import Execution
from isol8_site import dispatch, wire
from isol8_site.redis import get_redis
from sandbox.spec import ExecutionSpec, Limits, RunResult
from sessions_app import services as session_services
from sessions_app.models import Session, SessionState
from tenants import quotas, throttle
from tenants.models import Tenant
from tests.conftest import make_key

Handler = Callable[..., None]


@dataclass(frozen=True)
class Sent:
    """One task the web sent: its name, arguments and queue (None: the shared run queue)."""

    name: str
    args: tuple[Any, ...]
    queue: str | None


def ok_result(stdout: str = "hello\n") -> RunResult:
    return RunResult(status="ok", exit_code=0, stdout=stdout, stdout_total=len(stdout), duration_ms=7)


@dataclass
class FakeDispatch:
    """Stands in for ``dispatch.send``: records each task, and answers the ones it has a handler for."""

    sent: list[Sent] = field(default_factory=list)
    handlers: dict[str, Handler] = field(default_factory=dict)

    def __call__(self, name: str, *args: Any, queue: str | None = None) -> None:
        self.sent.append(Sent(name, args, queue))
        handler = self.handlers.get(name)
        if handler is not None:
            handler(*args)

    def names(self) -> list[str]:
        return [s.name for s in self.sent]

    def runs(self) -> list[Sent]:
        return [s for s in self.sent if s.name == dispatch.RUN_EXECUTION]

    # ------------------------------------------------------------ fake worker

    def answer_runs(self, result: RunResult | Callable[[Execution], RunResult] | None) -> None:
        """Claim every run sent and finish it with ``result``; None: runs stay queued (nobody answers)."""
        if result is None:
            self.handlers.pop(dispatch.RUN_EXECUTION, None)
            return

        def run(execution_id: str) -> None:
            claimed = services.execution_claim(execution_id=execution_id)
            assert claimed is not None, f"the fake worker could not claim {execution_id}"
            outcome = result(claimed) if callable(result) else result
            services.execution_finish(execution=claimed, result=outcome)

        self.handlers[dispatch.RUN_EXECUTION] = run

    def answer_files(self, answer: wire.FileAnswer | None) -> None:
        """Answer every session file operation with ``answer``, as the worker does; None: never answer."""
        if answer is None:
            self.handlers.pop(dispatch.SESSION_FILE_OP, None)
            return

        def file_op(session_pk: int, op_id: str, op: dict[str, Any]) -> None:
            session_services.session_release(session_pk=session_pk, owner=op_id)
            wire.push(wire.file_answer_key(op_id), answer.encode(), ttl=60)

        self.handlers[dispatch.SESSION_FILE_OP] = file_op

    def answer_cleanup(self, removed: int) -> None:
        """Every host asked to remove its orphans answers with ``removed``."""

        def remove_orphans(request_id: str) -> None:
            wire.push(wire.cleanup_key(request_id), removed, ttl=60)

        self.handlers[dispatch.REMOVE_ORPHANS] = remove_orphans


@pytest.fixture
def fake_dispatch(monkeypatch: pytest.MonkeyPatch) -> FakeDispatch:
    """The fake dispatch, answering runs with an ``ok`` result unless the test says otherwise."""
    fake = FakeDispatch()
    fake.answer_runs(ok_result())
    monkeypatch.setattr(dispatch, "send", fake)
    return fake


@pytest.fixture(autouse=True)
def _clean_cluster_state() -> Iterator[None]:
    """Each test starts with no worker heartbeat, no global slot held and no failed-auth block.

    These keys belong to this test run's cluster (its run queue is named after
    the pytest process), so other runs sharing the Redis are not touched.
    """

    def clean() -> None:
        get_redis().delete(
            wire.heartbeat_key(), quotas._cluster_key("global"), quotas._cluster_key("waiting")
        )
        with throttle._lock:
            throttle._blocked.clear()

    clean()
    yield
    clean()


# -------------------------------------------------------------------- clients


_handler: ClientHandler | None = None


def new_client() -> APIClient:
    """A test client sharing one request handler with every other.

    Each handler builds the middleware chain on its first request, and
    WhiteNoise's middleware then indexes every static file (~0.15 s): once per
    test run is enough, the chain is the same for all of them.
    """
    global _handler
    api = APIClient()
    if _handler is None:
        _handler = api.handler
    api.handler = _handler
    return api


@pytest.fixture
def client() -> APIClient:
    """A client without credentials."""
    return new_client()


def client_for(key: str) -> APIClient:
    api = new_client()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return api


@pytest.fixture
def api(api_key: str, fake_dispatch: FakeDispatch) -> APIClient:
    """The tenant's client (its requests reach the fake dispatch)."""
    return client_for(api_key)


@pytest.fixture
def master(transactional_db: Any, fake_dispatch: FakeDispatch) -> APIClient:
    return client_for(settings.ISOL8_API_KEY)


@pytest.fixture
def other_tenant(tenant: Tenant) -> Tenant:
    from tenants.services import tenant_create

    return tenant_create(slug=f"other-{uuid.uuid4().hex[:8]}", name="Other tenant")


@pytest.fixture
def other_api(other_tenant: Tenant, fake_dispatch: FakeDispatch) -> APIClient:
    return client_for(make_key(other_tenant))


# ------------------------------------------------------------------ factories


def make_session(tenant: Tenant, session_id: str = "s1", *, alive: bool = True, **fields: Any) -> Session:
    """A session as a worker leaves it after its first run: active, with a container on ``host-a``.

    ``alive``: its host beats (if it does not yet), as a worker would.
    """
    values: dict[str, Any] = {
        "runtime": "python",
        "state": SessionState.ACTIVE,
        "container_id": "c0ffee",
        "worker_host": "host-a",
        "limits": {"memory": 512 * 1024**2, "cpu": 1.0},
    }
    values.update(fields)
    if alive and values["worker_host"] and not get_redis().hexists(wire.heartbeat_key(), values["worker_host"]):
        # Its host is alive and its engine answers (the heartbeat a worker would send).
        wire.beat(values["worker_host"], {"docker": True, "capacity": 100, "warm": 0, "idle": 0})
    return Session.objects.create(tenant=tenant, session_id=session_id, **values)


def start_queued(tenant: Tenant, *, session_id: str | None = None, runtime: str = "bash") -> Execution:
    """An execution recorded and enqueued as POST /execute leaves it, before any worker claims it."""
    limits = Limits(timeout_ms=1000, memory=512 * 1024**2, cpu=1.0, pids=64, max_output=1024**2,
                    sandbox_size=64 * 1024**2, tmp_size=32 * 1024**2)
    return services.execution_start(
        tenant=tenant, spec=ExecutionSpec(runtime=runtime, code="echo queued"), limits=limits, streamed=False,
        session_id=session_id,
    )


# ------------------------------------------------------------------ assertions

# What a sentence for a person never contains: Python reprs of containers or
# objects, DRF's ErrorDetail, tracebacks, exception class names (CamelCase).
REPR_MARKS = ("ErrorDetail", "Traceback", "object at 0x", "<class", "{'", "['")
CLASS_NAME = re.compile(r"\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]+)+\b")
# Python's literals where JSON would say true, false, null.
PY_LITERAL = re.compile(r"\b(True|False|None)\b")


def assert_sentence(message: object) -> None:
    assert isinstance(message, str) and len(message) >= 8, message
    for mark in REPR_MARKS:
        assert mark not in message, message
    assert not CLASS_NAME.search(message), message
    assert not PY_LITERAL.search(message), message


def assert_error(response: Any, status: int, code: str, *mentions: str) -> dict[str, Any]:
    """``response`` is the one error shape with ``status``, ``code`` and a sentence naming ``mentions``."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert_sentence(body["error"])
    for word in mentions:
        assert word in body["error"], body
    return body


def assert_nothing_started(fake: FakeDispatch, *, executions: int = 0, tenant: Tenant | None = None) -> None:
    """No task was sent, no Execution row beyond ``executions`` exists, and no quota slot stayed taken."""
    assert fake.sent == []
    assert Execution.objects.count() == executions
    if tenant is not None:
        assert quotas.tenant_usage(tenant=tenant).running == 0
