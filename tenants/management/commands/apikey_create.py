"""`python manage.py apikey_create SLUG [--name N] [--ttl-ms N]`: prints only the key."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.selectors import tenant_get
from tenants.services import apikey_create


class Command(BaseCommand):
    help = "Create an API key for a tenant and print it (it is shown this once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--ttl-ms", type=int, default=None)

    def handle(self, *args: Any, **opts: Any) -> None:
        tenant = tenant_get(slug=opts["slug"])
        if tenant is None:
            raise CommandError(f"no tenant {opts['slug']!r}")
        ttl_ms = opts["ttl_ms"]
        if ttl_ms is not None and ttl_ms <= 0:
            raise CommandError("--ttl-ms must be positive")
        created = apikey_create(
            tenant=tenant,
            name=opts["name"],
            ttl=timedelta(milliseconds=ttl_ms) if ttl_ms else None,
        )
        self.stdout.write(created.plaintext)
