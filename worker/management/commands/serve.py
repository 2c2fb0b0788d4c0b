"""`python manage.py serve`: the whole service on one machine (isol8's `serve`).

It checks its prerequisites (Docker, Redis, images, database), then runs three
child processes: the ASGI web server (uvicorn), a Celery worker (thread pool,
the shared run queue and this host's own queue) and Celery beat. Ctrl-C or
SIGTERM stops all three; the worker removes its containers on the way out, and
whatever it could not remove is removed here by label.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from isol8_site.config import ConfigError, load_config
from isol8_site.dispatch import worker_queues
from isol8_site.redis import get_redis
from isol8_site.web import uvicorn_argv
from sandbox import config as sandbox_config
from sandbox import containers
from sandbox.errors import SandboxError
from sandbox.images import build_prebuilt_images, missing_images
from sessions_app.models import Session, SessionState
from tenants.services import tenant_ensure_default

STOP_GRACE_SECONDS = 20
# A child that exits this soon after `serve` started is a start-up failure, not a crash.
STARTUP_SECONDS = 10.0


class Command(BaseCommand):
    help = "Run the web server, a worker and beat; stop them all on Ctrl-C or SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 3000))
        parser.add_argument("--host", default=os.environ.get("ISOL8_BIND", "127.0.0.1"))
        parser.add_argument("--key", default=None, help="master key (default: ISOL8_API_KEY)")
        parser.add_argument("--config", default=None, help="isol8.config.json to use")
        parser.add_argument("--web-workers", type=int, default=settings.ISOL8_WEB_WORKERS)
        parser.add_argument("--no-beat", action="store_true")
        parser.add_argument(
            "--generate-key", action="store_true", help="make up a master key when none is set"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        env = dict(os.environ)
        if opts["config"]:
            try:
                load_config(opts["config"])
            except ConfigError as exc:
                raise CommandError(f"bad config: {exc}") from exc
            env["ISOL8_CONFIG"] = os.path.abspath(opts["config"])
        key, where = self.master_key(opts)
        env["ISOL8_API_KEY"] = key
        if not 1 <= opts["port"] <= 65535:
            raise CommandError(f"invalid port {opts['port']}")
        sandbox_config.configure(settings.SANDBOX)
        self.check_prerequisites()
        try:
            # isol8 builds missing prebuiltImages at startup; so does this.
            build_prebuilt_images(self.stdout.write)
        except SandboxError as exc:
            raise CommandError(f"building prebuiltImages failed: {exc}") from exc
        call_command("migrate", interactive=False, verbosity=0)
        tenant_ensure_default()
        # The metrics files of earlier processes (their pids are gone) start over.
        for stale in Path(settings.ISOL8_METRICS_DIR).glob("*.db"):
            stale.unlink(missing_ok=True)

        python = sys.executable
        host = settings.ISOL8_WORKER_HOST
        commands = {
            "web": uvicorn_argv(host=opts["host"], port=opts["port"], workers=opts["web_workers"]),
            "worker": [
                python, "-m", "celery", "-A", "isol8_site", "worker", "-P", "threads",
                "-c", str(settings.ISOL8_WORKER_CONCURRENCY), "-n", f"isol8@{host}",
                # WARNING: two INFO lines per task are CPU on every run, and noise.
                "-Q", worker_queues(host), "-l", "WARNING",
                "--without-gossip", "--without-mingle",
            ],
        }
        if not opts["no_beat"]:
            schedule = settings.DATA_DIR / "celerybeat-schedule"
            commands["beat"] = [
                python, "-m", "celery", "-A", "isol8_site", "beat", "-l", "WARNING",
                "-s", str(schedule),
            ]
        children: dict[str, subprocess.Popen[bytes]] = {}
        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            for name, argv in commands.items():
                children[name] = subprocess.Popen(argv, env=env, cwd=settings.BASE_DIR)
            self.banner(opts["host"], opts["port"], where)
            self.supervise(children, commands, env, lambda: stopping)
        finally:
            self.shutdown(children)

    def master_key(self, opts: dict[str, Any]) -> tuple[str, str]:
        """The master key and where it comes from (for the banner: the key itself is never printed)."""
        if opts["key"]:
            if len(opts["key"]) < settings.MASTER_KEY_MIN_LENGTH or len(set(opts["key"])) < 8:
                raise CommandError(f"--key is too weak: use at least {settings.MASTER_KEY_MIN_LENGTH} characters")
            return opts["key"], "the value of --key"
        if settings.ISOL8_API_KEY:
            if os.environ.get("ISOL8_API_KEY"):
                return settings.ISOL8_API_KEY, "the value of $ISOL8_API_KEY"
            return settings.ISOL8_API_KEY, f"in {settings.MASTER_KEY_FILE}"
        if not opts["generate_key"]:
            raise CommandError("API key required: use --key or set ISOL8_API_KEY")
        # Made once and kept (readable by this user only), so it survives restarts.
        fd = os.open(settings.MASTER_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("isol8_master_" + secrets.token_hex(24) + "\n")
        return settings.MASTER_KEY_FILE.read_text().strip(), f"generated into {settings.MASTER_KEY_FILE}"

    def supervise(
        self,
        children: dict[str, subprocess.Popen[bytes]],
        commands: dict[str, list[str]],
        env: dict[str, str],
        stopping: Callable[[], bool],
    ) -> None:
        """Restart a child that dies, with backoff, while the others keep serving.

        A child that fails within its first seconds after ``serve`` started
        (a port in use, a bad setting) stops everything instead: restarting
        cannot fix that. Later deaths (a worker killed, a crash) are restarted
        after 1, 2, 4 ... 30 s, the delay growing while it keeps dying.
        """
        started = time.monotonic()
        deaths: dict[str, list[float]] = {name: [] for name in children}
        due: dict[str, float] = {}
        while not stopping():
            now = time.monotonic()
            for name, child in children.items():
                if name in due or child.poll() is None:
                    continue
                if now - started < STARTUP_SECONDS:
                    raise CommandError(f"{name} exited with {child.returncode} while starting; see its output above")
                deaths[name] = [t for t in deaths[name] if now - t < 300] + [now]
                delay = min(30.0, 2.0 ** (len(deaths[name]) - 1))
                self.stderr.write(f"{name} exited with {child.returncode}; restarting it in {delay:g} s")
                due[name] = now + delay
            for name, when in list(due.items()):
                if when <= now:
                    del due[name]
                    children[name] = subprocess.Popen(commands[name], env=env, cwd=settings.BASE_DIR)
            time.sleep(0.3)

    def banner(self, bind: str, port: int, key_source: str) -> None:
        where = "localhost" if bind in ("0.0.0.0", "127.0.0.1", "::") else bind
        url = f"http://{where}:{port}"
        key_file = str(settings.MASTER_KEY_FILE)
        bearer = f"$(cat {key_file})" if key_file in key_source else (
            "$ISOL8_API_KEY" if "ISOL8_API_KEY" in key_source else "<your --key>"
        )
        self.stdout.write(
            f"isol8 server v{settings.ISOL8_VERSION} listening on http://{bind}:{port} "
            f"(worker {settings.ISOL8_WORKER_HOST}, {settings.ISOL8_SANDBOX_MODE} mode; "
            "Ctrl-C stops everything)\n"
            f"Master key: {key_source} (it is never printed)\n"
            "Try it:\n"
            f"  curl -H \"Authorization: Bearer {bearer}\" -H 'Content-Type: application/json' \\\n"
            f"       -d '{{\"request\":{{\"runtime\":\"python\",\"code\":\"print(1)\"}}}}' {url}/execute\n"
            f"Admin: {url}/admin/ (user {os.environ.get('ISOL8_ADMIN_USER', 'admin')}; "
            "set ISOL8_ADMIN_PASSWORD before `make run` to create or reset it)"
        )

    def check_prerequisites(self) -> None:
        problems = []
        if not containers.docker_ping():
            problems.append("Docker is not reachable: start dockerd (`make run` does this)")
        try:
            get_redis().ping()
        except Exception as exc:  # noqa: BLE001 - reported as a missing prerequisite
            problems.append(f"Redis is not reachable at {settings.REDIS_URL}: {exc}")
        if not problems:
            missing = missing_images(settings.SANDBOX.runtimes)
            if missing:
                problems.append(
                    f"sandbox images missing: {', '.join(missing)} (run `python manage.py build_images`)"
                )
        if problems:
            raise CommandError("cannot start:\n  - " + "\n  - ".join(problems))

    def shutdown(self, children: dict[str, subprocess.Popen[bytes]]) -> None:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for name, child in children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop in time; killing it")
                child.kill()
                child.wait()
        # The whole service stops: sessions of this host end with it, and
        # whatever the worker could not remove (it was killed) goes now.
        Session.objects.filter(worker_host=settings.ISOL8_WORKER_HOST).exclude(
            state=SessionState.STOPPED
        ).update(state=SessionState.STOPPED, state_reason="the server stopped")
        try:
            for container in containers.list_managed(host=settings.ISOL8_WORKER_HOST):
                containers.remove_container(container.id)
        except Exception as exc:  # noqa: BLE001 - Docker gone: nothing more to clean
            self.stderr.write(f"could not clean up containers: {exc}")
        self.stdout.write("isol8 stopped")
