"""What a finished execution looks like to a client: isol8's result object and the history record."""

from __future__ import annotations

import json
from typing import Any

from django.utils import timezone

from executions.events import TIMEOUT_MARKER
from executions.models import FINISHED, Execution, Status
from sandbox.spec import truncation_marker


def result_payload(execution: Execution, *, network_logs: bool = True) -> dict[str, Any]:
    """The isol8 ExecutionResult (plus ``status`` and ``timedOut``) of a finished row.

    ``network_logs``: with ``networkLogs`` when the run asked for them (False:
    the history's pages, which leave the network_log column unread).
    """
    limits = execution.limits or {}
    max_output = int(limits.get("max_output", 0))
    stdout = execution.stdout
    stderr = execution.stderr
    if execution.stdout_truncated:
        stdout += truncation_marker(execution.stdout_bytes, max_output)
    if execution.stderr_truncated:
        stderr += truncation_marker(execution.stderr_bytes, max_output)
    if execution.timed_out:
        stderr += TIMEOUT_MARKER
    finished = execution.finished_at or timezone.now()
    payload: dict[str, Any] = {
        "stdout": stdout.rstrip(),
        "stderr": stderr.rstrip(),
        "exitCode": execution.exit_code if execution.exit_code is not None else 1,
        "durationMs": execution.duration_ms or 0,
        "truncated": execution.truncated,
        "executionId": str(execution.pk),
        "runtime": execution.runtime,
        "timestamp": _iso(finished),
        "status": execution.status,
        "timedOut": execution.timed_out,
    }
    if execution.request.get("outputPaths"):
        payload["files"] = execution.files or {}
    if execution.status == Status.ERROR and execution.error:
        payload["error"] = execution.error
    if execution.request.get("stateful"):
        payload.update(cell_fields(execution.cell))
    if network_logs and execution.request.get("logNetwork"):
        entries = network_log_entries(execution)
        if entries:  # isol8 leaves networkLogs out when there is nothing in it
            payload["networkLogs"] = entries
    return payload


def cell_fields(cell: Any) -> dict[str, Any]:
    """A stateful cell's part of the result: value, outputs, exception, stateLost (empty if it never ran)."""
    cell = cell if isinstance(cell, dict) else {}
    fields = {
        "value": cell.get("value"),
        "outputs": cell.get("outputs") or [],
        "exception": cell.get("exception"),
        "stateLost": bool(cell.get("stateLost", False)),
    }
    if cell.get("displaysDropped"):
        fields["displaysDropped"] = int(cell["displaysDropped"])
    return fields


def network_log_entries(execution: Execution) -> list[dict[str, Any]]:
    """A filtered run's logged connection attempts, as isol8's networkLogs (an absent path is left out)."""
    log = execution.network_log if execution.request.get("egress") else None
    if not isinstance(log, dict):
        return []
    return [{k: v for k, v in entry.items() if v is not None} for entry in log.get("entries", [])]


def result_json(execution: Execution) -> bytes:
    """The result object's JSON, as a waiting client receives it."""
    return json.dumps(result_payload(execution), separators=(",", ":")).encode()


def history_record(execution: Execution, *, detail: bool = False) -> dict[str, Any]:
    """An execution as GET /executions shows it: the result plus request facts.

    ``detail`` (GET /executions/{id}): with the egress proxy's whole log as
    ``networkLog`` (null unless the run was filtered) and ``networkLogs``
    when it asked for them. The pages of GET /executions have neither: a
    log holds up to hundreds of entries per run.
    """
    record: dict[str, Any] = result_payload(execution, network_logs=detail) if execution.status in FINISHED else {
        "executionId": str(execution.pk),
        "runtime": execution.runtime,
        "status": execution.status,
    }
    session = execution.session
    record.update(
        {
            "code": execution.code or execution.cmd,
            "sessionId": session.session_id if session is not None else None,
            "batchId": str(execution.batch_id) if execution.batch_id else None,
            "createdAt": _iso(execution.created_at),
            "startedAt": _iso(execution.started_at),
            "finishedAt": _iso(execution.finished_at),
        }
    )
    if detail:
        record["networkLog"] = execution.network_log
    return record


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None
