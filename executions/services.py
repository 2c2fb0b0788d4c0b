"""Writes for executions: record, enqueue, claim, finish, cancel, and the result shape."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from executions import events, quotas
from executions.models import FINISHED, Execution, Status
from executions.runner import TIMEOUT_EVENT, TIMEOUT_MARKER, truncation_marker
from executions.spec import ExecutionSpec, Limits, RunResult
from isol8_site.celery import host_queue
from isol8_site.redis import get_redis, push_reply, retrying
from tenants.models import Tenant

logger = logging.getLogger(__name__)

RESULT_KEY = "isol8:result:"
SECRETS_KEY = "isol8:secrets:"
CANCEL_CHANNEL = "isol8:cancel"
RESULT_TTL = 300
# A waiting /execute looks at the row this often (a pushed answer can be lost).
WAIT_CHECK_SECONDS = 5.0


@dataclass(frozen=True)
class Reply:
    """An HTTP answer computed by the worker for a waiting /execute request.

    It travels as "<status> <body JSON>": the web view sends the JSON text on
    as it is, without decoding and encoding it again.
    """

    status: int
    body: dict[str, Any]

    def body_json(self) -> str:
        return json.dumps(self.body, separators=(",", ":"))

    def to_wire(self) -> str:
        return f"{self.status} {self.body_json()}"

    def http(self) -> tuple[int, bytes]:
        """(status, JSON body) as the view sends it."""
        return self.status, self.body_json().encode()

    @staticmethod
    def from_wire(raw: bytes | str) -> tuple[int, bytes]:
        # The client returns bytes (no decode_responses); str only satisfies the type.
        status, _, body = (raw.encode() if isinstance(raw, str) else raw).partition(b" ")
        return int(status), body


# ------------------------------------------------------------------ web side


def execution_start(
    *,
    tenant: Tenant,
    spec: ExecutionSpec,
    limits: Limits,
    streamed: bool,
    session_id: str | None = None,
) -> Execution:
    """Take the tenant's quota, claim the session, record the execution and enqueue it.

    Raises 429 when a quota is used up, 409 when the session is busy. The
    quota (Redis, which may wait for a global slot) is taken outside any
    database transaction; the session claim and the new row commit together,
    so a failure leaves neither behind. Secret values go to Redis, never to
    the database.
    """
    from sessions_app.services import session_claim_for_execution

    execution_id = uuid.uuid4()
    quotas.acquire(
        tenant=tenant,
        execution_id=str(execution_id),
        hold_seconds=quotas.hold_seconds_for(limits.timeout_ms),
    )
    try:
        with transaction.atomic():
            session = None
            if session_id:
                session = session_claim_for_execution(
                    tenant=tenant, session_id=session_id, runtime=spec.runtime, limits=limits,
                    execution_id=execution_id,
                )
            execution = _record(execution_id, tenant, spec, limits, streamed, session)
            # A session's runs go to the worker that holds its container.
            queue = host_queue(session.worker_host) if session is not None and session.worker_host else None
            execution_enqueue(execution=execution, queue=queue)
    except BaseException:
        quotas.release(tenant_slug=tenant.slug, execution_id=str(execution_id))
        raise
    return execution


def _record(
    execution_id: uuid.UUID,
    tenant: Tenant,
    spec: ExecutionSpec,
    limits: Limits,
    streamed: bool,
    session: Any,
) -> Execution:
    execution = Execution.objects.create(
        id=execution_id,
        tenant=tenant,
        session=session,
        runtime=spec.runtime,
        code=spec.code,
        cmd=spec.cmd,
        request=spec.stored_request(),
        limits=limits.to_json(),
        streamed=streamed,
    )
    if spec.secrets:
        ttl = int(settings.ISOL8_QUEUE_TIMEOUT + 60)
        get_redis().set(SECRETS_KEY + str(execution.pk), json.dumps(spec.secrets), ex=ttl)
    return execution


class _Sent:
    """What ``send_task`` returns for a run: its id, and no Celery result.

    Results travel by Redis push (``execution_wait``). Celery's default
    AsyncResult would build a result-backend object in each new web thread,
    ~1 ms of every /execute.
    """

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.ignored = True


def execution_enqueue(*, execution: Execution, queue: str | None = None) -> None:
    """Hand the execution to a worker once the row is committed."""
    from executions.tasks import run_execution

    queue = queue or settings.ISOL8_RUN_QUEUE

    def send() -> None:
        try:
            run_execution.app.send_task(
                run_execution.name, args=(str(execution.pk),), queue=queue, ignore_result=True,
                result_cls=_Sent,  # type: ignore[arg-type]  # send_task only sets .ignored on it
            )
        except Exception:
            # The broker stayed unreachable through the publish retries: the run
            # never starts; say so in its row (the client gets 503).
            execution_fail(execution_id=str(execution.pk), reason="The service's queue was unreachable")
            raise

    transaction.on_commit(send)


def execution_wait(*, execution: Execution) -> tuple[int, bytes]:
    """Block until the worker pushes the result of a non-streamed execution.

    The worker pushes to a Redis list that this request pops: no polling, and
    a result that arrives before the pop is not lost. Every WAIT_CHECK_SECONDS
    (and after a Redis error) the row is looked at too: a run whose pushed
    answer was lost (Redis restarted) is answered from the history instead of
    being waited for until the deadline.
    """
    limits = Limits.from_json(execution.limits)
    wait = settings.ISOL8_QUEUE_TIMEOUT + limits.timeout_ms / 1000 + settings.ISOL8_RESULT_GRACE
    deadline = time.monotonic() + wait
    key = RESULT_KEY + str(execution.pk)
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            popped = get_redis().blpop([key], timeout=min(remaining, WAIT_CHECK_SECONDS))
        except redis.RedisError as exc:
            logger.warning("waiting for %s: Redis unreachable (%s)", execution.pk, exc)
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            popped = None
        if popped is not None:
            return Reply.from_wire(popped[1])
        finished = Execution.objects.filter(pk=execution.pk, status__in=FINISHED).first()
        if finished is not None and finished.started_at is None and finished.status == Status.ERROR:
            # It never started (no worker, queue lost): safe to send again.
            return Reply(503, {"error": f"{finished.error}; try again", "code": "unavailable"}).http()
        if finished is not None:
            # Its worker may be pushing the answer right now; else answer from the row.
            try:
                popped = get_redis().blpop([key], timeout=1)
            except redis.RedisError:
                popped = None
            return Reply.from_wire(popped[1]) if popped is not None else Reply(200, result_payload(finished)).http()
    # No answer in time: the run was never picked up, or its worker died.
    execution.refresh_from_db()
    started = execution.started_at is not None
    execution_fail(
        execution_id=str(execution.pk),
        reason="The worker running this execution stopped answering" if started
        else "No worker picked this execution up in time",
    )
    execution.refresh_from_db()
    if started:
        # It may have run: answer with its (failed) result, never "retry", so a
        # client cannot run the same code twice by retrying.
        return Reply(200, result_payload(execution)).http()
    unavailable = {"error": "No worker could run this execution; try again later", "code": "unavailable"}
    return Reply(503, unavailable).http()


def execution_cancel(*, execution: Execution) -> Execution:
    """Cancel a queued or running execution; finished ones are left as they are."""
    queued = Execution.objects.filter(pk=execution.pk, status=Status.QUEUED).update(
        status=Status.CANCELLED, finished_at=timezone.now(), error="Cancelled", exit_code=137
    )
    if queued:
        quotas.release(tenant_slug=execution.tenant.slug, execution_id=str(execution.pk))
        _release_session(execution)
        execution.refresh_from_db()
        _announce_end(execution)
        return execution
    if execution.status == Status.RUNNING:
        # The worker running it listens for this and kills the run.
        retrying(lambda: get_redis().publish(CANCEL_CHANNEL, str(execution.pk)), what="cancel")
    execution.refresh_from_db()
    return execution


def execution_fail(*, execution_id: str, reason: str) -> bool:
    """Fail a queued or running execution the service lost (reaper, timeouts)."""
    updated = Execution.objects.filter(
        pk=execution_id, status__in=[Status.QUEUED, Status.RUNNING]
    ).update(status=Status.ERROR, error=reason, finished_at=timezone.now())
    if updated:
        execution = Execution.objects.select_related("tenant").get(pk=execution_id)
        _release_session(execution)
        try:
            retrying(
                lambda: quotas.release(tenant_slug=execution.tenant.slug, execution_id=execution_id),
                what="quota release",
            )
        except redis.RedisError:
            logger.exception("releasing the quota of %s failed (its slot expires by itself)", execution_id)
        _announce_end(execution)
    return bool(updated)


def _release_session(execution: Execution) -> None:
    if execution.session_id is not None:
        from sessions_app.services import session_release

        session_release(session_pk=execution.session_id, owner=execution.pk)


# --------------------------------------------------------------- worker side


# What a worker reads of an execution it claims (the other fields stay deferred).
CLAIM_FIELDS = ("tenant_id", "session_id", "runtime", "code", "cmd", "request", "limits", "streamed")


def execution_claim(*, execution_id: str) -> Execution | None:
    """Take a queued execution for this worker; None when someone else has it.

    One UPDATE ... RETURNING (SQLite 3.35+, PostgreSQL) marks it running and
    reads what a run needs, its tenant's slug included: on this hot path an
    UPDATE and a SELECT through the ORM cost ~2-3 ms more. The Execution
    returned has its other fields deferred (read from the database if
    anything asks for them); its tenant carries only pk and slug the same way.
    """
    try:
        pk = uuid.UUID(execution_id)
    except ValueError:
        return None
    meta = Execution._meta
    now = timezone.now()
    host = settings.ISOL8_WORKER_HOST
    table, tenants = meta.db_table, Tenant._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            # Only table and column names are formatted in; values are parameters.
            f"UPDATE {table} SET status = %s, started_at = %s, worker_host = %s "
            f"WHERE id = %s AND status = %s RETURNING {', '.join(CLAIM_FIELDS)}, "
            f"(SELECT t.slug FROM {tenants} t WHERE t.id = {table}.tenant_id)",
            [
                Status.RUNNING,
                meta.get_field("started_at").get_db_prep_value(now, connection),
                host,
                meta.get_field("id").get_db_prep_value(pk, connection),
                Status.QUEUED,
            ],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    *values, slug = row
    loaded: dict[str, Any] = dict(zip(CLAIM_FIELDS, values, strict=True))
    for name in ("request", "limits"):
        json_field: Any = meta.get_field(name)
        loaded[name] = json_field.from_db_value(loaded[name], None, connection)
    loaded.update(id=pk, status=Status.RUNNING, started_at=now, worker_host=host, streamed=bool(loaded["streamed"]))
    # from_db takes the loaded values in the model's field order.
    names = [f.attname for f in meta.concrete_fields if f.attname in loaded]
    execution = Execution.from_db(connection.alias, names, [loaded[n] for n in names])
    execution.tenant = Tenant.from_db(connection.alias, ["id", "slug"], [loaded["tenant_id"], slug])
    return execution


def execution_spec(*, execution: Execution) -> tuple[ExecutionSpec, Limits]:
    """Rebuild the spec and limits of a claimed execution (secrets from Redis)."""
    req = execution.request
    secrets: dict[str, str] = {}
    if req.get("secretNames"):
        raw = retrying(lambda: get_redis().getdel(SECRETS_KEY + str(execution.pk)), what="secrets")
        secrets = json.loads(raw) if raw else {}
    spec = ExecutionSpec(
        runtime=execution.runtime,
        code=execution.code,
        cmd=execution.cmd,
        stdin=req.get("stdin", ""),
        env=req.get("env", {}),
        files=req.get("files", {}),
        output_paths=req.get("outputPaths", []),
        file_extension=req.get("fileExtension", ""),
        workdir=req.get("workdir", ""),
        setup_script=req.get("setupScript", ""),
        metadata=req.get("metadata", {}),
        secrets=secrets,
        install_packages=req.get("installPackages", []),
    )
    return spec, Limits.from_json(execution.limits)


def execution_finish(*, execution: Execution, result: RunResult, live: events.LivePublisher | None = None) -> None:
    """Store the outcome, then tell whoever waits (a /execute request or SSE streams).

    A session's claim is released in the same commit, before anyone hears the
    result: a client that sends its next run at once finds the session free.
    The quota release and the answer ride out a Redis restart (retried); if
    they cannot, the waiter finds the answer in the row and the slot expires.
    ``live``: the publisher of a streamed run's events (its terminal events go the same way).
    """
    max_history = settings.ISOL8_HISTORY_MAX_OUTPUT
    now = timezone.now()
    fields: dict[str, Any] = {
        "status": result.status,
        "exit_code": result.exit_code,
        "stdout": result.stdout[:max_history],
        "stderr": result.stderr[:max_history],
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "stdout_bytes": result.stdout_total,
        "stderr_bytes": result.stderr_total,
        "timed_out": result.timed_out,
        "error": result.error,
        "files": result.files,
        "finished_at": now,
        "duration_ms": result.duration_ms,
        "container_id": result.container_id,
        "package_source": result.package_source,
    }
    with transaction.atomic():
        updated = Execution.objects.filter(pk=execution.pk, status=Status.RUNNING).update(**fields)
        _release_session(execution)
    if updated:
        for name, value in fields.items():
            setattr(execution, name, value)
    reply = reply_for(execution, result) if updated and not execution.streamed else None
    # (Not updated: the reaper or a cancel finished it first; their answer stands.)

    def release_and_answer() -> None:
        # One round trip: the quota release and the result push.
        pipe = get_redis().pipeline(transaction=False)
        quotas.release(
            tenant_slug=execution.tenant.slug,
            execution_id=str(execution.pk),
            seconds=result.duration_ms / 1000,
            pipe=pipe,
        )
        if reply is not None:
            _push_reply(execution, reply, pipe=pipe)
        pipe.execute()

    try:
        retrying(release_and_answer, what=f"finishing {execution.pk}")
    except redis.RedisError:
        logger.exception("could not hand the result of %s to Redis; its waiter reads the row", execution.pk)
    if updated and live is not None:
        _publish_end(live, result)


def reply_for(execution: Execution, result: RunResult) -> Reply:
    if result.setup_failed:
        return Reply(
            422,
            {
                "error": f"Setup script failed (exit code {result.exit_code}): {result.stderr.rstrip()}",
                "code": "setup_failed",
            },
        )
    if result.error_code == "docker_unavailable":
        return Reply(503, {"error": result.error, "code": "unavailable"})
    if result.error_code == "install_failed":
        return Reply(422, {"error": result.error, "code": "install_failed"})
    return Reply(200, result_payload(execution))


def _push_reply(execution: Execution, reply: Reply, pipe: Any = None) -> None:
    push_reply(RESULT_KEY + str(execution.pk), reply.to_wire(), ttl=RESULT_TTL, pipe=pipe)


def _publish_end(live: events.LivePublisher, result: RunResult) -> None:
    """The terminal events of a stream: an error when there is one, then ``exit``.

    If live events were lost, nothing more is published: the streams end from
    the history row, which says how the run ended.
    """
    if live.lost:
        events.nudge(live.execution_id)  # the run is over: its streams end from the row now
        return
    code = str(result.exit_code if result.exit_code is not None else 1)
    if result.setup_failed:
        live.send("error", f"Setup script failed (exit code {code})", "setup")
        live.send("exit", code, "setup")
        return
    if result.error_code == "install_failed":
        live.send("error", result.error, "setup")
        live.send("exit", code, "setup")
        return
    if result.status == Status.TIMEOUT:
        live.send("error", TIMEOUT_EVENT)
    elif result.status == Status.OOM:
        live.send("error", "OUT OF MEMORY (killed at the memory limit)")
    elif result.status == Status.CANCELLED:
        live.send("error", "EXECUTION CANCELLED")
    elif result.status == Status.ERROR:
        live.send("error", result.error or "The service failed to run this execution")
    live.send("exit", code)


def _announce_end(execution: Execution) -> None:
    """Tell waiters about an execution finished outside a worker (cancel, reaper).

    Best effort: if Redis cannot take it, waiters find the finished row
    themselves (execution_wait and the SSE streams look at it).
    """
    try:
        if execution.streamed:
            if not events.has_exit(execution.pk):
                cancelled = execution.status == Status.CANCELLED
                events.announce_end(execution.pk, [
                    ("error", "EXECUTION CANCELLED" if cancelled else execution.error),
                    ("exit", "137" if cancelled else "1"),
                ])
        else:
            retrying(lambda: _push_reply(execution, Reply(200, result_payload(execution))), what="answer")
    except redis.RedisError:
        logger.exception("could not announce the end of %s; its waiters read the row", execution.pk)
        events.nudge(execution.pk)


# ------------------------------------------------------------------- shapes


def result_payload(execution: Execution) -> dict[str, Any]:
    """The isol8 ExecutionResult (plus ``status`` and ``timedOut``) of a finished row."""
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
        "timestamp": finished.isoformat().replace("+00:00", "Z"),
        "status": execution.status,
        "timedOut": execution.timed_out,
    }
    if execution.request.get("outputPaths"):
        payload["files"] = execution.files or {}
    if execution.status == Status.ERROR and execution.error:
        payload["error"] = execution.error
    return payload


def history_record(execution: Execution) -> dict[str, Any]:
    """An execution as GET /executions shows it: the result plus request facts."""
    record: dict[str, Any] = result_payload(execution) if execution.status in FINISHED else {
        "executionId": str(execution.pk),
        "runtime": execution.runtime,
        "status": execution.status,
    }
    session = execution.session
    record.update(
        {
            "code": execution.code or execution.cmd,
            "sessionId": session.session_id if session is not None else None,
            "createdAt": _iso(execution.created_at),
            "startedAt": _iso(execution.started_at),
            "finishedAt": _iso(execution.finished_at),
        }
    )
    return record


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None



def cleanup_containers(*, wait_seconds: float = 20.0) -> dict[str, int]:
    """Ask every live worker to remove its leaked containers; count what they removed.

    Images are never touched. A worker that does not answer in time is counted
    in ``unanswered``; its own periodic sweep will get to its leftovers.
    """
    from executions.tasks import remove_orphans_now
    from executions.worker import alive_hosts
    from isol8_site.celery import host_queue

    hosts = alive_hosts()
    reply_key = f"isol8:cleanup:{uuid.uuid4()}"
    for host in hosts:
        remove_orphans_now.apply_async(args=(reply_key,), queue=host_queue(host))
    removed = answered = 0
    deadline = time.monotonic() + wait_seconds
    while answered < len(hosts):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        popped = get_redis().blpop([reply_key], timeout=max(1, int(remaining)))
        if popped is None:
            break
        removed += int(popped[1])
        answered += 1
    return {"removed": removed, "workers": len(hosts), "unanswered": len(hosts) - answered}
