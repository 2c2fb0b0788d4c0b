"""Writes for sessions: claim one for an execution or a file operation, stop, prune.

A session is claimed by setting ``busy_execution`` with a conditional update:
of two requests racing for an idle session, exactly one gets it and the other
is told 409 session_busy. The claim is released when the operation ends
however it ends (the worker, the reaper, or the web view on an early error).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from isol8_site import dispatch, errors, metrics, wire
from isol8_site.errors import (
    QuotaExceeded,
    SessionBusy,
    SessionDead,
    SessionNotStarted,
    Unavailable,
    not_found,
    validation_error,
)
from isol8_site.redis import get_redis
from sandbox.runtimes import STATEFUL_RUNTIMES
from sandbox.spec import Limits
from sessions_app import placement
from sessions_app.models import LIVE_STATES, Session, SessionState
from sessions_app.selectors import live_session_count, live_session_limits, session_get
from tenants import quotas
from tenants.models import Tenant

logger = logging.getLogger(__name__)


def session_busy() -> SessionBusy:
    return SessionBusy("This session is running another execution; try again when it ends")


@dataclass(frozen=True)
class SessionAsk:
    """What a run's request named of its session's fixed traits, held against the session it runs in.

    A session keeps the network and egress filter it was created with, and
    whether it is stateful, as it keeps its runtime: a request naming another
    is 400. What a request does not name (``None``), its run takes from the
    session.
    """

    network: str | None = None  # options.network
    network_filter: dict[str, list[str]] | None = None  # options.networkFilter: {"whitelist", "blacklist"}
    stateful: bool | None = None  # the body's stateful


def session_claim_for_execution(
    *,
    tenant: Tenant,
    session_id: str,
    runtime: str,
    limits: Limits,
    execution_id: uuid.UUID,
    egress: dict[str, Any] | None = None,
    asked: SessionAsk | None = None,
) -> Session:
    """The caller's session (created on first use), marked busy with ``execution_id``.

    A new session is made with ``limits`` (its network among them) and the
    run's ``egress`` policy; the Session returned carries the network and
    policy every run of it gets (``limits``, ``egress``). Raised inside the
    caller's transaction, a refusal rolls the claim back with it.
    """
    asked = asked or SessionAsk()
    claimed = _claim_idle(tenant=tenant, session_id=session_id, runtime=runtime, owner=execution_id)
    if claimed is not None:
        check_network(claimed, asked=asked)
        check_stateful(claimed, asked=asked)
        check_host(claimed)
        return claimed
    # Not idle and ready: find out why (new, dead, other runtime, busy) the slow way.
    session = session_get(tenant=tenant, session_id=session_id)
    if session is None:
        if asked.stateful and runtime not in STATEFUL_RUNTIMES:
            raise validation_error(
                f"stateful: sessions of {runtime} cannot be stateful (only {', '.join(STATEFUL_RUNTIMES)})"
            )
        session = _session_create(
            tenant=tenant, session_id=session_id, runtime=runtime, limits=limits, egress=egress or {},
            stateful=bool(asked.stateful),
        )
    if session.state == SessionState.DEAD:
        raise SessionDead(
            f"Session {session_id!r} is no longer usable ({session.state_reason or 'its sandbox is gone'}); "
            "delete it (DELETE /session/{id}) and start a new one"
        )
    if session.runtime != runtime:
        raise validation_error(
            f'Cannot switch runtime from "{session.runtime}" to "{runtime}". '
            "Each persistent session supports a single runtime.",
            code="validation_error",
        )
    check_network(session, asked=asked)
    check_stateful(session, asked=asked)
    _claim(session, execution_id)
    check_host(session)
    return session


def check_stateful(session: Session, *, asked: SessionAsk) -> None:
    """A request naming the other kind of session (stateful or not) than this one is 400."""
    if asked.stateful is not None and asked.stateful != session.stateful:
        have, want = ("stateful", "not stateful") if session.stateful else ("not stateful", "stateful")
        raise validation_error(
            f"Cannot make this session {want}: it was created {have}. "
            "Each persistent session keeps what its first execute made it."
        )


def session_network(session: Session) -> str:
    """The network every run of the session gets (sessions made before it was stored have "none")."""
    return str((session.limits or {}).get("network", "none"))


def check_network(session: Session, *, asked: SessionAsk) -> None:
    """A request naming another network or (for a filtered session) another networkFilter is 400."""
    network = session_network(session)
    if asked.network is not None and asked.network != network:
        raise validation_error(
            f'Cannot switch network from "{network}" to "{asked.network}". '
            "Each persistent session keeps the network it was created with."
        )
    if network != "filtered" or asked.network_filter is None:
        return
    egress = session.egress or {}
    for name in ("whitelist", "blacklist"):
        # The same patterns in another order or repeated filter the same way.
        if sorted(set(asked.network_filter.get(name, []))) != sorted(set(egress.get(name, []))):
            raise validation_error(
                f"Cannot change options.networkFilter.{name} of this session. "
                "Each persistent session keeps the network it was created with."
            )


class HostUnreachableError(Exception):
    """The session's worker host is not answering; raised inside the caller's transaction.

    ``session_host_unreachable`` turns it into the client's error once that
    transaction has rolled back (a lost host's session is marked dead then).
    """

    def __init__(self, session: Session, *, lost: bool) -> None:
        super().__init__(session.worker_host)
        self.session = session
        self.lost = lost


def check_host(session: Session) -> None:
    """Raise HostUnreachableError when the host holding this session's container cannot take its work now.

    One Redis read: the heartbeats. A host that is down but may be restarting
    (ISOL8_HOST_LOST_SECONDS) is a 503 to retry; past that it is lost.
    """
    host = session.worker_host
    if not host:
        return
    beats = wire.worker_beats()
    if wire.host_usable(host, beats):
        return
    raise HostUnreachableError(session, lost=wire.host_lost(host, beats))


def session_host_unreachable(exc: HostUnreachableError) -> Exception:
    """The error for a call whose session's host is down: 503 while it may come back, else dead (and marked so)."""
    session, host = exc.session, exc.session.worker_host
    if not exc.lost:
        return Unavailable(
            f"This session's worker host {host} is not answering right now (restarting?); try again shortly",
            retry_after=5,
        )
    reason = lost_reason(host)
    session_mark_dead(session_pk=session.pk, reason=reason)
    return SessionDead(
        f"Session {session.session_id!r} is no longer usable ({reason}); "
        "delete it (DELETE /session/{id}) and start a new one"
    )


def sessions_of_lost_hosts_mark_dead() -> int:
    """Periodic (the reaper): live sessions on hosts lost for good are marked dead; how many."""
    beats = wire.worker_beats()
    hosts = set(Session.objects.live().exclude(worker_host="").values_list("worker_host", flat=True))
    marked = 0
    for host in hosts:
        if wire.host_lost(host, beats):
            marked += Session.objects.live().filter(worker_host=host).update(
                state=SessionState.DEAD, state_reason=lost_reason(host)
            )
    return marked


def lost_reason(host: str) -> str:
    return f"its worker host {host} stopped answering (its worker or its Docker engine)"


def session_restart(*, tenant: Tenant, session_id: str) -> None:
    """POST /session/{id}/restart: a new interpreter in the caller's stateful session, its files kept.

    A session that is not stateful has no interpreter to restart (400). The
    restart reaches the container like a file operation (claimed, counted,
    sent to the session's host), so it never overlaps a cell.
    """
    session = session_get(tenant=tenant, session_id=session_id)
    if session is not None and session.is_live and not session.stateful:
        raise validation_error("This session is not stateful: it has no interpreter to restart")
    file_operation(tenant=tenant, session_id=session_id, op={"op": "kernel_restart"})


def session_claim_for_files(*, tenant: Tenant, session_id: str) -> tuple[Session, uuid.UUID]:
    """Claim an existing session with a ready container for one file operation."""
    session = session_get(tenant=tenant, session_id=session_id)
    if session is None:
        raise not_found("Session not found")
    if session.state == SessionState.DEAD:
        raise SessionDead(f"Session {session_id!r} is no longer usable: {session.state_reason}")
    if not session.container_id:
        raise SessionNotStarted("This session has no sandbox yet: run an execution in it first")
    try:
        check_host(session)
    except HostUnreachableError as exc:
        raise session_host_unreachable(exc) from None
    op_id = uuid.uuid4()
    _claim(session, op_id)
    return session, op_id


def _claim_idle(*, tenant: Tenant, session_id: str, runtime: str, owner: uuid.UUID) -> Session | None:
    """The usual case in one statement: claim the caller's idle live session of this runtime.

    UPDATE ... RETURNING (SQLite 3.35+, PostgreSQL) instead of a read and a
    conditional update: one round trip and no ORM query building on every
    session run. The Session returned carries only what the caller needs
    (pk for the execution's foreign key, worker host for routing, limits and
    egress for the run's network); it is never saved.
    """
    fields = Session._meta
    busy = fields.get_field("busy_execution").get_db_prep_value(owner, connection)
    now = fields.get_field("last_used_at").get_db_prep_value(timezone.now(), connection)
    with connection.cursor() as cursor:
        cursor.execute(
            # Only the table name is formatted in; every value is a query parameter.
            f"UPDATE {fields.db_table} SET busy_execution = %s, last_used_at = %s "
            "WHERE tenant_id = %s AND session_id = %s AND runtime = %s AND busy_execution IS NULL "
            "AND state IN (%s, %s) RETURNING id, worker_host, container_id, state, limits, egress, stateful",
            [busy, now, tenant.pk, session_id, runtime, *LIVE_STATES],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    pk, worker_host, container_id, state, limits, egress, stateful = row
    json_field: Any = fields.get_field("limits")  # the JSON columns as the ORM would read them
    return Session(
        pk=pk, tenant=tenant, session_id=session_id, runtime=runtime, worker_host=worker_host,
        container_id=container_id, state=state, busy_execution=owner,
        limits=json_field.from_db_value(limits, None, connection),
        egress=json_field.from_db_value(egress, None, connection),
        stateful=bool(stateful),
    )


def _claim(session: Session, owner: uuid.UUID) -> None:
    claimed = Session.objects.live().filter(
        pk=session.pk, busy_execution__isnull=True
    ).update(busy_execution=owner, last_used_at=timezone.now())
    if not claimed:
        session.refresh_from_db()
        if session.state == SessionState.STOPPED:
            raise not_found("Session not found")
        raise session_busy()
    session.busy_execution = owner


def _session_create(
    *, tenant: Tenant, session_id: str, runtime: str, limits: Limits, egress: dict[str, Any], stateful: bool = False
) -> Session:
    """A new live session of ``tenant`` if its caps allow one more (called inside a transaction).

    The tenant's row is written first (a no-op update): on PostgreSQL that
    locks the row, on SQLite it takes the database's write lock, so that two
    requests creating the tenant's last allowed session at once cannot both
    count one free place; the second counts after the first committed.
    """
    Tenant.objects.filter(pk=tenant.pk).update(max_sessions=F("max_sessions"))
    if tenant.max_sessions is not None and live_session_count(tenant=tenant) >= tenant.max_sessions:
        metrics.rejected(tenant=tenant.slug, kind="sessions")
        raise QuotaExceeded(
            f"Quota exceeded: at most {tenant.max_sessions} live sessions; delete one first", retry_after=30
        )
    _check_session_resources(tenant=tenant, limits=limits)
    host = placement.choose_host()
    try:
        with transaction.atomic():
            return Session.objects.create(
                tenant=tenant, session_id=session_id, runtime=runtime, limits=limits.to_json(), egress=egress,
                worker_host=host, stateful=stateful,
            )
    except IntegrityError:
        # Another request created it a moment ago: use that one.
        existing = session_get(tenant=tenant, session_id=session_id)
        if existing is None:
            raise
        return existing


def _check_session_resources(*, tenant: Tenant, limits: Limits) -> None:
    """A new session must fit in what the tenant's live sessions may hold together (429 otherwise)."""
    if tenant.max_session_memory is None and tenant.max_session_cpus is None:
        return
    memory, cpus = float(limits.memory), float(limits.cpu)
    for held in live_session_limits(tenant=tenant):
        memory += float(held.get("memory", 0))
        cpus += float(held.get("cpu", 0))
    if tenant.max_session_memory is not None and memory > tenant.max_session_memory:
        metrics.rejected(tenant=tenant.slug, kind="session_memory")
        raise QuotaExceeded(
            f"Quota exceeded: this tenant's live sessions may hold {tenant.max_session_memory} bytes of memory "
            "together; delete a session or ask for less memoryLimit", retry_after=30,
        )
    if tenant.max_session_cpus is not None and cpus > tenant.max_session_cpus:
        metrics.rejected(tenant=tenant.slug, kind="session_cpus")
        raise QuotaExceeded(
            f"Quota exceeded: this tenant's live sessions may hold {tenant.max_session_cpus:g} CPUs together; "
            "delete a session or ask for a lower cpuLimit", retry_after=30,
        )


def session_release(*, session_pk: int, owner: uuid.UUID | str) -> None:
    Session.objects.filter(pk=session_pk, busy_execution=owner).update(
        busy_execution=None, last_used_at=timezone.now()
    )


def session_attach_container(*, session_pk: int, container_id: str) -> bool:
    """Record the new container of a starting session; False when it was deleted meanwhile.

    Only a session still ``starting`` becomes ``active``: a DELETE that came
    while its first run created the container wins, and the caller removes
    that container.
    """
    return bool(
        Session.objects.filter(pk=session_pk, state=SessionState.STARTING).update(
            container_id=container_id,
            worker_host=settings.ISOL8_WORKER_HOST,
            state=SessionState.ACTIVE,
            state_reason="",
        )
    )


def session_mark_dead(*, session_pk: int, reason: str) -> None:
    Session.objects.live().filter(pk=session_pk).update(
        state=SessionState.DEAD, state_reason=reason[:500]
    )


def session_stop(*, session: Session, reason: str = "deleted") -> None:
    """Stop a session now; its worker removes the container (DELETE, prune, admin)."""
    updated = Session.objects.filter(pk=session.pk).exclude(state=SessionState.STOPPED).update(
        state=SessionState.STOPPED, state_reason=reason
    )
    if not updated:
        return
    if session.busy_execution:
        # A run in progress is cancelled first, so its client gets an answer.
        get_redis().publish(wire.CANCEL_CHANNEL, str(session.busy_execution))
    if session.container_id and session.worker_host:
        _stop_container(session)


def _stop_container(session: Session) -> None:
    """Ask the session's worker to remove its container."""
    queue = dispatch.host_queue(session.worker_host)
    dispatch.send(dispatch.STOP_SESSION_CONTAINER, session.pk, session.container_id, queue=queue)


def sessions_stop_idle(*, tenant: Tenant | None = None) -> int:
    """POST /cleanup: stop every session that is not running something right now."""
    idle = Session.objects.visible().filter(busy_execution__isnull=True)
    if tenant is not None:
        idle = idle.filter(tenant=tenant)
    stopped = 0
    for session in idle:
        session_stop(session=session, reason="removed by /cleanup")
        stopped += 1
    return stopped


def sessions_prune(*, now: Any = None) -> int:
    """Stop idle sessions past cleanup.maxContainerAgeMs; never a busy one."""
    config = settings.ISOL8_CONFIG.cleanup
    if not config.auto_prune:
        return 0
    now = now or timezone.now()
    cutoff = now - timedelta(milliseconds=config.max_container_age_ms)
    pruned = 0
    idle = Session.objects.live().filter(busy_execution__isnull=True, last_used_at__lt=cutoff)
    for session in idle:
        # Re-check idleness in the update itself: a run may have claimed it since.
        stopped = Session.objects.live().filter(
            pk=session.pk, busy_execution__isnull=True, last_used_at__lt=cutoff
        ).update(state=SessionState.STOPPED, state_reason="pruned: idle")
        if stopped and session.container_id and session.worker_host:
            _stop_container(session)
        pruned += stopped
    return pruned


# ------------------------------------------------------------- file transfer


def file_operation(*, tenant: Tenant, session_id: str, op: dict[str, Any]) -> dict[str, Any]:
    """One file operation in the caller's session, counted against the tenant's quotas like a run.

    It claims the session (SessionBusy while a run or another file operation
    has it) and a concurrency slot and rate token (QuotaExceeded when used
    up), so file operations cannot crowd runs out of the worker's threads.
    Returns the operation's data; a refusal is the domain error its worker named.
    """
    session, op_id = session_claim_for_files(tenant=tenant, session_id=session_id)
    try:
        quotas.acquire(
            tenant=tenant,
            execution_id=str(op_id),
            hold_seconds=settings.ISOL8_QUEUE_TIMEOUT + settings.ISOL8_FILE_OP_TIMEOUT + 30,
        )
    except BaseException:
        session_release(session_pk=session.pk, owner=op_id)
        raise
    try:
        answer = _file_request(session=session, op_id=op_id, op=op)
    finally:
        quotas.release(tenant_slug=tenant.slug, execution_id=str(op_id))
    if answer.data is None:
        raise errors.rebuilt(answer.error_code, answer.message)
    return answer.data


def _file_request(*, session: Session, op_id: uuid.UUID, op: dict[str, Any]) -> wire.FileAnswer:
    """Run a file operation on the session's worker and wait for its answer."""
    dispatch.send(dispatch.SESSION_FILE_OP, session.pk, str(op_id), op, queue=dispatch.host_queue(session.worker_host))
    wait = settings.ISOL8_QUEUE_TIMEOUT + settings.ISOL8_FILE_OP_TIMEOUT + 10
    popped = get_redis().blpop([wire.file_answer_key(op_id)], timeout=wait)
    if popped is None:
        session_release(session_pk=session.pk, owner=op_id)
        return wire.FileAnswer(error_code="unavailable", message="The session's worker did not answer; try again later")
    return wire.FileAnswer.decode(popped[1])
