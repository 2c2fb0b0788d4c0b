"""`python manage.py build_images`: build the sandbox images, only when they changed.

Images are tagged with a hash of their Dockerfile, the shared files and the base
image's name, so an unchanged image is not rebuilt and a worker always runs the
image that matches its code.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sandbox import config as sandbox_config
from sandbox.containers import docker_ping
from sandbox.errors import SandboxError
from sandbox.images import build_image, build_prebuilt_images, build_science_image, ensure_base_image
from sandbox.runtimes import RUNTIME_NAMES


class Command(BaseCommand):
    help = "Build the sandbox images (the base image with debootstrap when needed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("runtimes", nargs="*", help="default: ISOL8_RUNTIMES")
        parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
        parser.add_argument("--base-only", action="store_true",
                            help="only the base image (the service image builds FROM it too)")

    def handle(self, *args: Any, **opts: Any) -> None:
        runtimes = opts["runtimes"] or settings.SANDBOX.runtimes
        unknown = sorted(set(runtimes) - set(RUNTIME_NAMES))
        if unknown:
            raise CommandError(f"unknown runtime(s): {', '.join(unknown)}")
        sandbox_config.configure(settings.SANDBOX)
        if not docker_ping():
            raise CommandError("Docker is not reachable (is dockerd running?)")
        try:
            ensure_base_image(self.stdout.write)
            if opts["base_only"]:
                return
            for runtime in runtimes:
                build_image(runtime, log=self.stdout.write, force=opts["force"])
            if "python" in runtimes:
                build_science_image(log=self.stdout.write, force=opts["force"])
            build_prebuilt_images(self.stdout.write)
        except SandboxError as exc:
            raise CommandError(str(exc)) from exc
