"""`python manage.py tenant_create SLUG [--name NAME]`: for scripts and CI."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.selectors import tenant_get
from tenants.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant (does nothing when the slug exists and --exist-ok is given)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--max-concurrent", type=int)
        parser.add_argument("--exist-ok", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        if tenant_get(slug=opts["slug"]) is not None:
            if opts["exist_ok"]:
                return
            raise CommandError(f"tenant {opts['slug']!r} already exists")
        quotas = {}
        if opts["max_concurrent"]:
            quotas["max_concurrent"] = opts["max_concurrent"]
        try:
            tenant = tenant_create(slug=opts["slug"], name=opts["name"], **quotas)
        except ValidationError as exc:
            raise CommandError(f"invalid tenant: {exc.message_dict}") from exc
        self.stderr.write(f"created tenant {tenant.slug}")
