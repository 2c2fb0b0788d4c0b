"""Idempotency keys: a retried submission gets the first one's execution instead of running the code again.

``Idempotency-Key: <key>`` on POST /execute, /execute/stream and
/execute/batch. Within ISOL8_IDEMPOTENCY_SECONDS (a day) the same tenant,
key and body (route included) answer with the execution the first request
started (its result, or its live stream from the first event) or the first
batch's answer; the same key with another body is 422
``idempotency_mismatch``. Whatever the interleaving, the code runs once:

* the first request inserts the key's row before it starts anything; a
  concurrent retry's insert fails on the unique constraint (the database
  serialises them, SQLite and PostgreSQL alike) and it waits for the row to
  name its execution;
* a first request that fails before anything runs (400, 403, 429 ...)
  deletes the row: nothing ran, so a retry may run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from executions.models import Execution, IdempotencyKey
from isol8_site.errors import IdempotencyMismatch, Unavailable, validation_error
from tenants.models import Tenant

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
WAIT_SECONDS = 30.0  # how long a retry waits for the first request to start its execution


def body_digest(route: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{route}\n{canonical}".encode()).hexdigest()


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise validation_error(f"{HEADER}: 1 to {MAX_KEY_LENGTH} printable ASCII characters")
    return key


@dataclass
class Outcome:
    """What a keyed submission led to: a new run (``replayed`` false) or the first one's."""

    execution: Execution | None
    answer: Any
    replayed: bool


def _claim(*, tenant: Tenant, key: str, route: str, digest: str) -> tuple[IdempotencyKey, bool]:
    """The key's row, and whether this request inserted it (and so must run the work)."""
    cutoff = timezone.now() - timedelta(seconds=settings.ISOL8_IDEMPOTENCY_SECONDS)
    while True:
        try:
            with transaction.atomic():
                return IdempotencyKey.objects.create(tenant=tenant, key=key, route=route, body_digest=digest), True
        except IntegrityError:
            existing = IdempotencyKey.objects.filter(tenant=tenant, key=key).first()
        if existing is None:
            continue  # the first request failed and let the key go meanwhile
        if existing.created_at < cutoff:
            # Expired: whoever deletes it first may claim the key anew.
            IdempotencyKey.objects.filter(pk=existing.pk, created_at__lt=cutoff).delete()
            continue
        if existing.body_digest != digest:
            raise IdempotencyMismatch(
                f"{HEADER} {key!r} was used with another request body; use a new key for a new request"
            )
        return existing, False


def _first_outcome(row: IdempotencyKey) -> IdempotencyKey | None:
    """Wait for the first request to name what it started; None if it gave the key up (it failed)."""
    deadline = time.monotonic() + WAIT_SECONDS
    pause = 0.02
    while time.monotonic() < deadline:
        current = IdempotencyKey.objects.select_related("execution").filter(pk=row.pk).first()
        if current is None or current.execution_id is not None or current.answer is not None:
            return current
        time.sleep(pause)
        pause = min(pause * 2, 0.5)
    raise Unavailable(f"The first request with this {HEADER} is still starting; try again shortly")


def purge_expired(*, now: Any = None) -> int:
    """Delete keys past ISOL8_IDEMPOTENCY_SECONDS (beat, hourly): how many went. Their executions stay."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.ISOL8_IDEMPOTENCY_SECONDS)
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return int(deleted)


def run_once(
    *, tenant: Tenant, key: str, route: str, body: Any, start: Callable[[], tuple[Execution | None, Any]]
) -> Outcome:
    """Run ``start`` unless this key already did; ``start`` returns (execution, answer to keep)."""
    digest = body_digest(route, body)
    while True:
        row, mine = _claim(tenant=tenant, key=check_key(key), route=route, digest=digest)
        if mine:
            try:
                execution, answer = start()
            except BaseException:
                IdempotencyKey.objects.filter(pk=row.pk).delete()
                raise
            IdempotencyKey.objects.filter(pk=row.pk).update(execution=execution, answer=answer)
            return Outcome(execution=execution, answer=answer, replayed=False)
        first = _first_outcome(row)
        if first is not None:
            return Outcome(execution=first.execution, answer=first.answer, replayed=True)
