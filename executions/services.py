"""Writes of executions: record and enqueue, wait, cancel, fail; and, for the worker, claim and finish.

Every state change of an Execution row goes through here, each one a
conditional update (a row moves queued → running → finished once, whoever
gets there first: the worker, a cancel, the reaper). The answers travel back
through Redis as isol8_site/wire.py defines them; a refusal is a domain error
(isol8_site/errors.py), never an HTTP status.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
import uuid
from typing import Any

import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from executions import events
from executions.models import FINISHED, Execution, Status
from executions.results import result_json
from isol8_site import dispatch, errors, logs, metrics, tracing, wire
from isol8_site.errors import DomainError, InstallFailed, SetupFailed, Unavailable, validation_error
from isol8_site.redis import get_redis, retrying
from sandbox.spec import ExecutionSpec, Limits, RunResult
from sessions_app import services as sessions
from sessions_app.models import Session
from tenants import quotas
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# A waiting /execute looks at the row this often (a pushed answer can be lost).
WAIT_CHECK_SECONDS = 5.0


# ------------------------------------------------------------------ web side


def execution_start(
    *,
    tenant: Tenant,
    spec: ExecutionSpec,
    limits: Limits,
    streamed: bool,
    session_id: str | None = None,
    callback_url: str = "",
    batch_id: uuid.UUID | None = None,
    session_ask: sessions.SessionAsk | None = None,
) -> Execution:
    """Take the tenant's quota, claim the session, record the execution and enqueue it.

    Raises QuotaExceeded when a quota is used up, SessionBusy when the
    session runs something. The quota (Redis, which may wait for a global
    slot) is taken outside any database transaction; the session claim and
    the new row commit together, so a failure leaves neither behind. Secret
    values go to Redis, never to the database. A session's run gets the
    session's network and egress policy (``session_ask``: what the request
    named of them, 400 when it differs).
    """
    execution_id = uuid.uuid4()
    quotas.acquire(
        tenant=tenant,
        execution_id=str(execution_id),
        hold_seconds=quotas.hold_seconds_for(limits.timeout_ms),
    )
    try:
        try:
            execution = _record_and_enqueue(
                tenant=tenant, spec=spec, limits=limits, streamed=streamed, session_id=session_id,
                callback_url=callback_url, batch_id=batch_id, execution_id=execution_id, session_ask=session_ask,
            )
        except sessions.HostUnreachableError as exc:
            raise sessions.session_host_unreachable(exc) from None
    except BaseException:
        quotas.release(tenant_slug=tenant.slug, execution_id=str(execution_id))
        raise
    metrics.started(tenant=tenant.slug, runtime=spec.runtime)
    return execution


def _record_and_enqueue(
    *,
    tenant: Tenant,
    spec: ExecutionSpec,
    limits: Limits,
    streamed: bool,
    session_id: str | None,
    callback_url: str,
    batch_id: uuid.UUID | None,
    execution_id: uuid.UUID,
    session_ask: sessions.SessionAsk | None = None,
) -> Execution:
    """The session claim, the row and the enqueue, in one transaction (sent once it commits)."""
    with transaction.atomic():
        session = None
        if session_id:
            session = sessions.session_claim_for_execution(
                tenant=tenant, session_id=session_id, runtime=spec.runtime, limits=limits,
                execution_id=execution_id, egress=spec.egress, asked=session_ask,
            )
            spec, limits = _in_session(session, spec, limits)
        execution = Execution.objects.create(
            id=execution_id,
            tenant=tenant,
            session=session,
            runtime=spec.runtime,
            code=spec.code,
            cmd=spec.cmd,
            request=spec.to_stored(),
            limits=limits.to_json(),
            streamed=streamed,
            callback_url=callback_url,
            batch_id=batch_id,
        )
        if spec.secrets:
            ttl = int(settings.ISOL8_QUEUE_TIMEOUT + 60)
            get_redis().set(wire.secrets_key(execution.pk), json.dumps(spec.secrets), ex=ttl)
        logs.execution_step("received", execution_id=execution.pk, tenant=tenant.slug, runtime=spec.runtime,
                            session=session_id or None, streamed=streamed)
        # A session's runs go to the worker that holds its container.
        queue = dispatch.host_queue(session.worker_host) if session is not None and session.worker_host else None
        _enqueue(execution, queue)
    return execution


def _in_session(session: Session, spec: ExecutionSpec, limits: Limits) -> tuple[ExecutionSpec, Limits]:
    """A session run's spec and limits with the session's network and egress policy.

    The session's container was made on that network, and the worker reads a
    run's egress policy from its spec: a run that named neither takes them
    from the session (one that named others was refused by the claim).
    """
    if session.stateful:
        check_cell(spec)
    network = sessions.session_network(session)
    egress = dict(session.egress or {}) if network == "filtered" else {}
    if network == limits.network and egress == spec.egress and not session.stateful:
        return spec, limits
    # A cell has no stdin: a WebSocket's execute (interactive) runs as any other cell.
    interactive = spec.interactive and not session.stateful
    return (dataclasses.replace(spec, egress=egress, stateful=session.stateful, interactive=interactive),
            dataclasses.replace(limits, network=network))


def check_cell(spec: ExecutionSpec) -> None:
    """A stateful session's run is a cell of code: what a cell cannot have is 400 (inside the claim's transaction)."""
    if spec.cmd:
        refused = "cmd (a stateful session runs code cells in its interpreter)"
    elif spec.stdin:
        refused = "stdin (a cell has none; write a file and read it)"
    elif spec.tty:
        refused = "tty (a cell's output streams; open a terminal with a non-stateful session)"
    elif spec.setup_script:
        refused = "setupScript (run it as a cell, or before in a non-stateful session)"
    elif spec.file_extension:
        refused = "fileExtension (a cell is not a file)"
    else:
        return
    raise validation_error(f"A stateful session's execute cannot have {refused}")


def _enqueue(execution: Execution, queue: str | None) -> None:
    """Hand the execution to a worker once the row is committed."""

    def send() -> None:
        # Logged first: the worker may claim it before send() returns.
        logs.execution_step("queued", execution_id=execution.pk, tenant=execution.tenant.slug,
                            runtime=execution.runtime, queue=queue or "shared")
        try:
            with tracing.span("execution.enqueue", execution_id=str(execution.pk), tenant=execution.tenant.slug,
                              runtime=execution.runtime):
                dispatch.send(dispatch.RUN_EXECUTION, str(execution.pk), queue=queue)
        except Exception:
            # The broker stayed unreachable through the publish retries: the run
            # never starts; say so in its row (the client gets 503).
            execution_fail(execution_id=str(execution.pk), reason=events.QUEUE_UNREACHABLE)
            raise

    transaction.on_commit(send)


def execution_wait(*, execution: Execution) -> bytes:
    """Block until the worker answers a non-streamed execution; its result's JSON.

    The worker pushes to a Redis list that this request pops: no polling, and
    an answer that arrives before the pop is not lost. Every
    WAIT_CHECK_SECONDS (and after a Redis error) the row is looked at too: a
    run whose pushed answer was lost (Redis restarted) is answered from the
    history instead of being waited for until the deadline. Raises the domain
    error a run ended with (a failed setup script or install, Docker down) and
    Unavailable for a run that never started.
    """
    limits = Limits.from_json(execution.limits)
    wait = settings.ISOL8_QUEUE_TIMEOUT + limits.timeout_ms / 1000 + settings.ISOL8_RESULT_GRACE
    deadline = time.monotonic() + wait
    key = wire.result_key(execution.pk)
    while (remaining := deadline - time.monotonic()) > 0:
        popped = _pop(key, min(remaining, WAIT_CHECK_SECONDS))
        if popped is not None:
            return _answer(popped)
        finished = Execution.objects.filter(pk=execution.pk, status__in=FINISHED).first()
        if finished is not None:
            if finished.started_at is None and finished.status == Status.ERROR:
                raise Unavailable(f"{finished.error}; try again")  # it never started: safe to send again
            # Its worker may be pushing the answer right now; else answer from the row.
            popped = _pop(key, 1)
            return _answer(popped) if popped is not None else result_json(finished)
    # No answer in time: the run was never picked up, or its worker died.
    execution.refresh_from_db()
    started = execution.started_at is not None
    execution_fail(execution_id=str(execution.pk), reason=events.WORKER_SILENT if started else events.NEVER_PICKED)
    if not started:
        raise Unavailable("No worker could run this execution; try again later")
    # It may have run: answer with its (failed) result, never "retry", so a
    # client cannot run the same code twice by retrying.
    execution.refresh_from_db()
    return result_json(execution)


def execution_replay_wait(*, execution: Execution) -> bytes:
    """The result JSON of an execution another request started (an idempotent replay).

    The row is read, not the Redis answer: that one belongs to the request
    that started the run, which must not lose it to its retry.
    """
    limits = Limits.from_json(execution.limits)
    deadline = time.monotonic() + settings.ISOL8_QUEUE_TIMEOUT + limits.timeout_ms / 1000 + settings.ISOL8_RESULT_GRACE
    pause = 0.02
    while True:
        finished = Execution.objects.filter(pk=execution.pk, status__in=FINISHED).first()
        if finished is not None:
            return result_json(finished)
        if time.monotonic() > deadline:
            raise Unavailable("The execution of this Idempotency-Key has not finished; ask GET /executions/{id}")
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _pop(key: str, timeout: float) -> bytes | None:
    try:
        popped = get_redis().blpop([key], timeout=timeout)
    except redis.RedisError as exc:
        logger.warning("waiting on %s: Redis unreachable (%s)", key, exc)
        time.sleep(min(1.0, timeout))
        return None
    if popped is None:
        return None
    value = popped[1]
    return value.encode() if isinstance(value, str) else bytes(value)


def _answer(raw: bytes) -> bytes:
    message = wire.ResultMessage.decode(raw)
    if message.result is not None:
        return message.result
    raise errors.rebuilt(message.error_code, message.message)


def execution_cancel(*, execution: Execution) -> Execution:
    """Cancel a queued or running execution; finished ones are left as they are."""
    queued = Execution.objects.filter(pk=execution.pk, status=Status.QUEUED).update(
        status=Status.CANCELLED, finished_at=timezone.now(), error=events.CANCELLED, exit_code=137
    )
    if queued:
        quotas.release(tenant_slug=execution.tenant.slug, execution_id=str(execution.pk))
        _release_session(execution)
        execution.refresh_from_db()
        _count_finished(execution)
        _announce_end(execution)
        _webhook_on_end(execution)
        return execution
    if execution.status == Status.RUNNING:
        # The worker running it listens for this and kills the run.
        retrying(lambda: get_redis().publish(wire.CANCEL_CHANNEL, str(execution.pk)), what="cancel")
    execution.refresh_from_db()
    return execution


def execution_fail(*, execution_id: str, reason: str) -> bool:
    """Fail a queued or running execution the service lost (reaper, timeouts, a crashed run)."""
    updated = Execution.objects.filter(
        pk=execution_id, status__in=[Status.QUEUED, Status.RUNNING]
    ).update(status=Status.ERROR, error=reason, finished_at=timezone.now())
    if updated:
        execution = Execution.objects.select_related("tenant").get(pk=execution_id)
        _count_finished(execution)
        _release_session(execution)
        try:
            retrying(
                lambda: quotas.release(tenant_slug=execution.tenant.slug, execution_id=execution_id),
                what="quota release",
            )
        except redis.RedisError:
            logger.exception("releasing the quota of %s failed (its slot expires by itself)", execution_id)
        _announce_end(execution)
        _webhook_on_end(execution)
    return bool(updated)


def _webhook_on_end(execution: Execution) -> None:
    """A finished execution with a callbackUrl: its first delivery attempt, once the row is committed."""
    if execution.callback_url:
        execution_id = str(execution.pk)
        transaction.on_commit(lambda: webhook_schedule(execution_id=execution_id, attempt=1))


def webhook_schedule(*, execution_id: str, attempt: int, delay: float = 0.0) -> None:
    """Queue delivery attempt ``attempt`` of an execution's webhook (executions/webhooks.py) in ``delay`` s."""
    try:
        dispatch.send(dispatch.DELIVER_WEBHOOK, execution_id, attempt, queue=settings.ISOL8_WEBHOOK_QUEUE,
                      countdown=delay or None)
    except Exception:
        logger.exception("could not queue the webhook of %s (attempt %d)", execution_id, attempt)


def _count_finished(execution: Execution) -> None:
    """The metrics and the log line of an execution that reached its final status."""
    finished_at = execution.finished_at or timezone.now()
    total = (finished_at - execution.created_at).total_seconds() if execution.created_at else 0.0
    metrics.finished(
        tenant=execution.tenant.slug,
        runtime=execution.runtime,
        status=execution.status,
        run_seconds=execution.duration_ms / 1000 if execution.duration_ms is not None else None,
        total_seconds=total,
    )
    logs.execution_step(
        "finished", execution_id=execution.pk, tenant=execution.tenant.slug, runtime=execution.runtime,
        status=execution.status, exit_code=execution.exit_code, duration_ms=execution.duration_ms,
        total_ms=round(total * 1000, 1),
    )


def _release_session(execution: Execution) -> None:
    if execution.session_id is not None:
        sessions.session_release(session_pk=execution.session_id, owner=execution.pk)


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
                    ("error", events.CANCELLED_EVENT if cancelled else execution.error),
                    ("exit", "137" if cancelled else "1"),
                ])
        else:
            answer = wire.ResultMessage(result=result_json(execution)).encode()
            retrying(lambda: wire.push(wire.result_key(execution.pk), answer, ttl=wire.RESULT_TTL), what="answer")
    except redis.RedisError:
        logger.exception("could not announce the end of %s; its waiters read the row", execution.pk)
        events.nudge(execution.pk)


def containers_cleanup(*, wait_seconds: float = 20.0) -> dict[str, int]:
    """Ask every live worker to remove its leaked containers; count what they removed.

    Images are never touched. A worker that does not answer in time is counted
    in ``unanswered``; its own periodic sweep will get to its leftovers.
    """
    hosts = wire.alive_hosts()
    request_id = uuid.uuid4()
    for host in hosts:
        dispatch.send(dispatch.REMOVE_ORPHANS, str(request_id), queue=dispatch.host_queue(host))
    removed = answered = 0
    deadline = time.monotonic() + wait_seconds
    while answered < len(hosts):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        popped = get_redis().blpop([wire.cleanup_key(request_id)], timeout=max(1, int(remaining)))
        if popped is None:
            break
        removed += int(popped[1])
        answered += 1
    return {"removed": removed, "workers": len(hosts), "unanswered": len(hosts) - answered}


# --------------------------------------------------------------- worker side


# A one-shot run whose host lost its engine goes back to the shared queue at most this often.
REQUEUE_MAX = 3


def execution_requeue(*, execution_id: str, host: str) -> bool:
    """Give a claimed one-shot run back to the shared queue, for another host; False when it may not go again.

    Its worker could not get a sandbox because its Docker engine stopped
    answering: nothing of the program ran, so another host can run it. At most
    REQUEUE_MAX times (every engine may be down), then it fails as usual.
    """
    key = wire.requeue_key(execution_id)
    pipe = get_redis().pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, int(settings.ISOL8_QUEUE_TIMEOUT + 60))
    tries = int(pipe.execute()[0])
    if tries > REQUEUE_MAX:
        return False
    updated = Execution.objects.filter(pk=execution_id, status=Status.RUNNING, worker_host=host).update(
        status=Status.QUEUED, started_at=None, worker_host=""
    )
    if not updated:
        return False
    logger.info("execution %s: the engine of %s is down, back to the shared queue (%d)", execution_id, host, tries)
    dispatch.send(dispatch.RUN_EXECUTION, execution_id)
    return True


# What a worker reads of an execution it claims (the other fields stay deferred).
CLAIM_FIELDS = ("tenant_id", "session_id", "runtime", "code", "cmd", "request", "limits", "streamed", "created_at")


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
    loaded["created_at"] = _db_datetime(loaded["created_at"])
    loaded.update(id=pk, status=Status.RUNNING, started_at=now, worker_host=host, streamed=bool(loaded["streamed"]))
    # from_db takes the loaded values in the model's field order.
    names = [f.attname for f in meta.concrete_fields if f.attname in loaded]
    execution = Execution.from_db(connection.alias, names, [loaded[n] for n in names])
    execution.tenant = Tenant.from_db(connection.alias, ["id", "slug"], [loaded["tenant_id"], slug])
    waited = (now - execution.created_at).total_seconds() if execution.created_at is not None else 0.0
    metrics.claimed(runtime=execution.runtime, waited_seconds=waited)
    logs.execution_step("started", execution_id=pk, tenant=slug, runtime=execution.runtime, worker_host=host,
                        queue_wait_ms=round(waited * 1000, 1))
    return execution


def _db_datetime(value: Any) -> Any:
    """A datetime column as a raw RETURNING gives it: naive UTC (text or datetime) on SQLite, aware on PostgreSQL."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if isinstance(value, datetime.datetime) and timezone.is_naive(value):
        value = timezone.make_aware(value, datetime.UTC)
    return value


def execution_spec(*, execution: Execution) -> tuple[ExecutionSpec, Limits]:
    """Rebuild the spec and limits of a claimed execution (secrets from Redis)."""
    secrets: dict[str, str] = {}
    if execution.request.get("secretNames"):
        raw = retrying(lambda: get_redis().getdel(wire.secrets_key(execution.pk)), what="secrets")
        secrets = json.loads(raw) if raw else {}
    spec = ExecutionSpec.from_stored(
        runtime=execution.runtime, code=execution.code, cmd=execution.cmd, stored=execution.request,
        secrets=secrets,
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
    fields: dict[str, Any] = {
        "status": result.status,
        "exit_code": result.exit_code,
        "stdout": storable(result.stdout[:max_history]),
        "stderr": storable(result.stderr[:max_history]),
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "stdout_bytes": result.stdout_total,
        "stderr_bytes": result.stderr_total,
        "timed_out": result.timed_out,
        "error": storable(result.error),
        "files": result.files,
        "finished_at": timezone.now(),
        "duration_ms": result.duration_ms,
        "container_id": result.container_id,
        "package_source": result.package_source,
        "network_log": result.network_log,
        "cell": result.cell,
    }
    with transaction.atomic():
        updated = Execution.objects.filter(pk=execution.pk, status=Status.RUNNING).update(**fields)
        _release_session(execution)
    if updated:
        for name, value in fields.items():
            setattr(execution, name, value)
        _count_finished(execution)
    # (Not updated: the reaper or a cancel finished it first; their answer stands.)
    answer = answer_for(execution, result).encode() if updated and not execution.streamed else None

    def release_and_answer() -> None:
        # One round trip: the quota release and the answer.
        pipe = get_redis().pipeline(transaction=False)
        quotas.release(
            tenant_slug=execution.tenant.slug,
            execution_id=str(execution.pk),
            seconds=result.duration_ms / 1000,
            pipe=pipe,
        )
        if answer is not None:
            wire.push(wire.result_key(execution.pk), answer, ttl=wire.RESULT_TTL, pipe=pipe)
        if updated and result.network_log:
            quotas.count_egress(tenant_slug=execution.tenant.slug, totals=result.network_log.get("totals", {}),
                                pipe=pipe)
        pipe.execute()

    try:
        retrying(release_and_answer, what=f"finishing {execution.pk}")
    except redis.RedisError:
        logger.exception("could not hand the result of %s to Redis; its waiter reads the row", execution.pk)
    if updated and live is not None:
        _publish_end(live, result)
    if updated:
        _webhook_on_end(execution)


def storable(text: str) -> str:
    """Program output as the history keeps it: NUL characters become U+FFFD.

    PostgreSQL cannot store NUL in text; the same on SQLite keeps the result
    one thing whatever the database. Live stream events carry the raw text.
    """
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def answer_for(execution: Execution, result: RunResult) -> wire.ResultMessage:
    """What a waiting /execute gets: the result, or the domain error the run ended with."""
    if result.setup_failed:
        error: DomainError = SetupFailed(
            f"Setup script failed (exit code {result.exit_code}): {result.stderr.rstrip()}"
        )
    elif result.error_code == "docker_unavailable":
        error = Unavailable(result.error)
    elif result.error_code == "install_failed":
        error = InstallFailed(result.error)
    else:
        return wire.ResultMessage(result=result_json(execution))
    return wire.ResultMessage(error_code=error.code, message=error.message)


def _publish_end(live: events.LivePublisher, result: RunResult) -> None:
    """The terminal events of a stream: an error when there is one, then ``exit``.

    If live events were lost, nothing more is published: the streams end from
    the history row, which says how the run ended.
    """
    if live.lost:
        events.nudge(live.execution_id)  # the run is over: its streams end from the row now
        return
    code = str(result.exit_code if result.exit_code is not None else 1)
    if result.setup_failed or result.error_code == "install_failed":
        live.send("error", events.setup_failed_event(code) if result.setup_failed else result.error, "setup")
        live.send("exit", code, "setup")
        return
    if result.status == Status.TIMEOUT:
        live.send("error", events.TIMEOUT_EVENT)
    elif result.status == Status.OOM:
        live.send("error", events.OOM_EVENT)
    elif result.status == Status.CANCELLED:
        live.send("error", events.CANCELLED_EVENT)
    elif result.status == Status.ERROR:
        live.send("error", result.error or events.SERVICE_FAILED_EVENT)
    live.send("exit", code)
