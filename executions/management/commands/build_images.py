"""`python manage.py build_images`: build the sandbox images, only when they changed.

Images are tagged with a hash of their Dockerfile, the shared files and the base
image's name, so an unchanged image is not rebuilt and a worker always runs the
image that matches its code.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from executions import sandbox
from executions.packages import build_prebuilt_images
from isol8_site.errors import ApiError


class Command(BaseCommand):
    help = "Build the sandbox images (the base image with debootstrap when needed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("runtimes", nargs="*", help="default: ISOL8_RUNTIMES")
        parser.add_argument("--force", action="store_true", help="rebuild even if up to date")

    def handle(self, *args: Any, **opts: Any) -> None:
        runtimes = opts["runtimes"] or settings.ISOL8_RUNTIMES
        unknown = sorted(set(runtimes) - set(sandbox.RUNTIME_IMAGES))
        if unknown:
            raise CommandError(f"unknown runtime(s): {', '.join(unknown)}")
        if not sandbox.docker_ping():
            raise CommandError("Docker is not reachable (is dockerd running?)")
        try:
            sandbox.ensure_base_image(self.stdout.write)
            for runtime in runtimes:
                sandbox.build_image(runtime, log=self.stdout.write, force=opts["force"])
            build_prebuilt_images(self.stdout.write)
        except (sandbox.SandboxError, ApiError) as exc:
            raise CommandError(str(exc)) from exc
