"""execution_claim: the worker's one-statement claim of a queued execution (no stack needed)."""

from __future__ import annotations

from executions import services
from executions.models import Execution, Status


def test_claim_marks_running_and_reads_what_a_run_needs(tenant, settings):
    settings.ISOL8_WORKER_HOST = "claim-host"
    row = Execution.objects.create(
        tenant=tenant, runtime="python", code="print(1)", request={"stdin": "x", "env": {"A": "1"}},
        limits={"timeout_ms": 1000}, streamed=True,
    )
    claimed = services.execution_claim(execution_id=str(row.pk))
    assert claimed is not None
    assert (claimed.pk, claimed.status, claimed.worker_host) == (row.pk, Status.RUNNING, "claim-host")
    assert claimed.request == {"stdin": "x", "env": {"A": "1"}} and claimed.limits == {"timeout_ms": 1000}
    assert claimed.streamed is True and claimed.session_id is None
    assert (claimed.runtime, claimed.code, claimed.cmd) == ("python", "print(1)", "")
    assert claimed.tenant.slug == tenant.slug and claimed.tenant.pk == tenant.pk
    # Fields it did not read are loaded when asked for, never made up.
    assert claimed.created_at == row.created_at
    assert claimed.tenant.name == tenant.name
    stored = Execution.objects.get(pk=row.pk)
    assert stored.status == Status.RUNNING and stored.started_at is not None and stored.worker_host == "claim-host"


def test_claim_takes_only_queued_executions(tenant):
    row = Execution.objects.create(tenant=tenant, runtime="bash", code="echo 1")
    assert services.execution_claim(execution_id=str(row.pk)) is not None
    assert services.execution_claim(execution_id=str(row.pk)) is None  # already running
    cancelled = Execution.objects.create(tenant=tenant, runtime="bash", code="echo 1", status=Status.CANCELLED)
    assert services.execution_claim(execution_id=str(cancelled.pk)) is None
    assert services.execution_claim(execution_id="not-a-uuid") is None
    assert services.execution_claim(execution_id="00000000-0000-0000-0000-000000000000") is None
