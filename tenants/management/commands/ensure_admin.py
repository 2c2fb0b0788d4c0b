"""`python manage.py ensure_admin`: the admin user from ISOL8_ADMIN_PASSWORD, and the default tenant.

Without ISOL8_ADMIN_PASSWORD nothing is created (and nothing is changed), so a
machine never gets an admin with a guessable password.
"""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from tenants.services import tenant_ensure_default


class Command(BaseCommand):
    help = "Create or update the admin user from ISOL8_ADMIN_PASSWORD; ensure the default tenant."

    def handle(self, *args: Any, **opts: Any) -> None:
        tenant_ensure_default()
        password = os.environ.get("ISOL8_ADMIN_PASSWORD")
        username = os.environ.get("ISOL8_ADMIN_USER", "admin")
        if not password:
            self.stdout.write("ISOL8_ADMIN_PASSWORD is not set: no admin user created or changed.")
            return
        users = get_user_model()
        user, created = users.objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"admin user {username!r} {'created' if created else 'updated'}")
