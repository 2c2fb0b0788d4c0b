"""Idempotency keys are forgotten after ISOL8_IDEMPOTENCY_SECONDS; their executions stay in the history."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from executions import idempotency
from executions.models import IdempotencyKey
from tenants.services import tenant_create


@pytest.mark.django_db
def test_only_expired_keys_are_purged(settings):
    settings.ISOL8_IDEMPOTENCY_SECONDS = 3600
    tenant = tenant_create(slug="purge-t")
    now = timezone.now()
    IdempotencyKey.objects.create(tenant=tenant, key="old", route="execute", body_digest="x",
                                  created_at=now - timedelta(hours=2))
    IdempotencyKey.objects.create(tenant=tenant, key="new", route="execute", body_digest="x")
    assert idempotency.purge_expired(now=now) == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["new"]
