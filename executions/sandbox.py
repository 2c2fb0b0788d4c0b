"""The Docker sandbox: the only module that imports ``docker``.

It creates hardened containers (sandbox.md's baseline, every control), talks to
the launcher inside them, builds the images, and finds containers by label.

Two transports carry the launcher protocol (images/common/isol8_launcher.py):

* ``LauncherTransport``: the container's main process is the launcher; requests
  go over the container's attached stdin/stdout. No ``docker exec`` per run.
* ``ExecTransport``: the fallback. The container only sleeps; each request is a
  ``docker exec`` of the launcher in ``once`` mode, as the code user.

Everything above this module (pool, runner, sessions) is the same for both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import requests
from django.conf import settings

from executions.spec import Limits

logger = logging.getLogger(__name__)

KEEPALIVE_USER = "65534:65534"  # nobody: the exec-mode keep-alive never shares the code's uid
LAUNCHER_PATH = "/opt/isol8/isol8_launcher.py"
LAUNCHER_ARGV = ["python3", "-I", LAUNCHER_PATH]
# The containers' init (PID 1, reaps orphans), shipped in the images: Docker's
# own `init` would bind-mount a host binary into every sandbox.
INIT = ["/usr/bin/tini", "--"]
LABEL_UID = "isol8.uid"
IDENTITY_DIR = "/run/isol8"
LABEL_MANAGED = "isol8.managed"
LABEL_HOST = "isol8.host"
LABEL_TENANT = "isol8.tenant"
LABEL_SESSION = "isol8.session"
LABEL_RUNTIME = "isol8.runtime"
LABEL_POOL = "isol8.pool"
LABEL_IMAGE = "isol8.image"
LABEL_MODE = "isol8.mode"
FRAME_HEADER = struct.Struct(">IB")
MUX_HEADER = struct.Struct(">BxxxI")
RUNTIME_IMAGES = ("python", "node", "bash", "bun", "deno")


class SandboxError(Exception):
    """The sandbox failed (not the user's code): Docker, the launcher, the container."""


class DockerUnavailableError(SandboxError):
    pass


class UidAllocator:
    """Picks each sandbox's code uid: one no host account and no other live sandbox has.

    Per-user kernel limits (inotify instances, POSIX message queue bytes,
    ...) are counted per host uid. With one code uid for every sandbox, one
    tenant's code could use them up for all; with a uid per sandbox it only
    meets its own. (Docker's userns-remap would not help: it maps every
    container's uid 1000 to the same host uid.) The range is checked against
    this host's accounts at start; uids of the engine's live sandboxes, read
    from their labels, are never handed out again.
    """

    # A uid handed out this recently counts as used even if no container
    # carries it yet (its container may be being created right now).
    PENDING_SECONDS = 300.0

    def __init__(self, base: int, count: int) -> None:
        self.base, self.count = base, count
        self.used: set[int] = set()
        self.recent: dict[int, float] = {}
        self.lock = threading.Lock()

    def check_host_accounts(self, passwd: Path = Path("/etc/passwd")) -> None:
        """Refuse a range that overlaps an account of this machine."""
        try:
            lines = passwd.read_text().splitlines()
        except OSError:
            return
        for line in lines:
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit() and self.base <= int(fields[2]) < self.base + self.count:
                raise SandboxError(
                    f"ISOL8_SANDBOX_UID_BASE: uid {fields[2]} of host account {fields[0]!r} is in the sandbox range"
                )

    def sync(self, live: set[int]) -> None:
        """Taken: the uids the engine's sandboxes carry (their labels), and those just handed out."""
        now = time.monotonic()
        with self.lock:
            self.recent = {uid: at for uid, at in self.recent.items() if now - at < self.PENDING_SECONDS}
            self.used = set(live) | set(self.recent)

    def allocate(self) -> int:
        with self.lock:
            if len(self.used) >= self.count:
                raise SandboxError("no free sandbox uid left (ISOL8_SANDBOX_UID_COUNT)")
            while True:
                uid = self.base + secrets.randbelow(self.count)
                if uid not in self.used:
                    self.used.add(uid)
                    self.recent[uid] = time.monotonic()
                    return uid

    def release(self, uid: int) -> None:
        with self.lock:
            self.used.discard(uid)
            self.recent.pop(uid, None)


_uids: UidAllocator | None = None


def uids() -> UidAllocator:
    global _uids
    if _uids is None:
        _uids = UidAllocator(settings.ISOL8_SANDBOX_UID_BASE, settings.ISOL8_SANDBOX_UID_COUNT)
    return _uids


_local = threading.local()


def client() -> docker.DockerClient:
    """A Docker client per thread (requests sessions are not meant to be shared)."""
    existing = getattr(_local, "client", None)
    if existing is None:
        existing = docker.from_env(timeout=120)
        _local.client = existing
    return existing


def docker_ping() -> bool:
    """Does the engine answer within a few seconds? (A client of its own: the heartbeat must not hang.)"""
    try:
        pinger = getattr(_local, "pinger", None)
        if pinger is None:
            pinger = _local.pinger = docker.from_env(timeout=3)
        return bool(pinger.ping())
    except Exception:  # noqa: BLE001 - any failure means not reachable
        return False


@cache
def seccomp_profile() -> str:
    """The seccomp profile as JSON text (the SDK wants the text, not a path)."""
    return json.dumps(json.loads((settings.ISOL8_IMAGES_DIR / "seccomp.json").read_text()))


# ---------------------------------------------------------------------- images


def extra_ca_files() -> list[Path]:
    """Local CA certificates the images must trust (ISOL8_EXTRA_CA_DIR).

    Machines whose egress goes through a TLS-intercepting proxy trust its CA
    locally; package installs inside the sandboxes need it too.
    """
    folder = Path(settings.ISOL8_EXTRA_CA_DIR)
    return sorted(folder.glob("*.crt")) if folder.is_dir() else []


@cache
def image_hash(runtime: str) -> str:
    """Content hash of what the runtime's image is built from, and the base image.

    Computed once per process: a worker keeps using the image that matches the
    code it started with.
    """
    images = Path(settings.ISOL8_IMAGES_DIR)
    digest = hashlib.sha256(settings.ISOL8_BASE_IMAGE.encode())
    sources = [images / runtime / "Dockerfile", *sorted((images / "common").iterdir())]
    for path in [*sources, *extra_ca_files()]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def image_name(runtime: str) -> str:
    return f"{settings.ISOL8_IMAGE_PREFIX}-{runtime}:{image_hash(runtime)}"


def image_exists(name: str) -> bool:
    try:
        client().images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def missing_images(runtimes: list[str]) -> list[str]:
    return [image_name(rt) for rt in runtimes if not image_exists(image_name(rt))]


def ensure_base_image(log: Callable[[str], None]) -> None:
    """Make the base image exist: pull it, or debootstrap it when there is no registry."""
    base = settings.ISOL8_BASE_IMAGE
    if image_exists(base):
        return
    if not base.startswith("isol8-base:"):
        log(f"pulling base image {base}")
        client().images.pull(base)
        return
    if shutil.which("debootstrap") is None:
        raise SandboxError("debootstrap is not installed (apt-get install debootstrap)")
    suite = base.split(":", 1)[1]
    log(f"building base image {base} with debootstrap ({suite}, {settings.ISOL8_DEBIAN_MIRROR})")
    with tempfile.TemporaryDirectory(prefix="isol8-rootfs-") as rootfs:
        subprocess.run(
            ["debootstrap", "--variant=minbase", suite, rootfs, settings.ISOL8_DEBIAN_MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        client().api.import_image_from_stream(tar.stdout, repository=base.split(":")[0], tag=suite)
        tar.wait()
    if not image_exists(base):
        raise SandboxError(f"importing {base} failed")


def build_image(runtime: str, *, log: Callable[[str], None], force: bool = False) -> str:
    name = image_name(runtime)
    if not force and image_exists(name):
        log(f"{name} is up to date")
        return name
    log(f"building {name}")
    with tempfile.TemporaryDirectory(prefix="isol8-build-") as context:
        # The build context: images/ plus the local CA certificates in common/ca/.
        shutil.copytree(settings.ISOL8_IMAGES_DIR, context, dirs_exist_ok=True)
        ca_dir = Path(context) / "common" / "ca"
        ca_dir.mkdir(exist_ok=True)
        for cert in extra_ca_files():
            shutil.copy(cert, ca_dir / cert.name)
        _build(name, runtime, context, log)
    remove_old_images(runtime, keep=name, log=log)
    return name


def remove_old_images(runtime: str, *, keep: str, log: Callable[[str], None]) -> None:
    """Drop this runtime's earlier builds (other content hashes) that no container uses.

    Only images this project built (its prefix and label) are touched; one a
    container still runs from (a live session) stays until a later build.
    """
    repository = f"{settings.ISOL8_IMAGE_PREFIX}-{runtime}"
    for image in client().images.list(name=repository, filters={"label": f"{LABEL_MANAGED}=true"}):
        tags = [t for t in image.tags if t.startswith(f"{repository}:") and t != keep]
        if not tags or keep in image.tags:
            continue
        try:
            client().images.remove(image.id)
            log(f"  removed old image {', '.join(tags)}")
        except docker.errors.APIError:
            pass  # in use by a container


def _build(name: str, runtime: str, context: str, log: Callable[[str], None]) -> None:
    dockerfile = f"{runtime}/Dockerfile"
    if not (Path(context) / dockerfile).exists():
        dockerfile = "Dockerfile"
    try:
        for chunk in client().api.build(
            path=context,
            dockerfile=dockerfile,
            tag=name,
            buildargs={"BASE_IMAGE": settings.ISOL8_BASE_IMAGE},
            labels={LABEL_MANAGED: "true", LABEL_IMAGE: runtime},
            rm=True,
            forcerm=True,
            decode=True,
        ):
            if "error" in chunk:
                raise SandboxError(f"building {name}: {chunk['error'].strip()}")
            text = chunk.get("stream", "").strip()
            if text.startswith("Step "):
                log(f"  {text}")
    except docker.errors.APIError as exc:
        raise SandboxError(f"building {name}: {exc}") from exc


# ------------------------------------------------------------------ containers


def hardened_config(
    *,
    runtime: str,
    limits: Limits,
    labels: dict[str, str],
    mode: str,
    egress: bool = False,
    image: str | None = None,
    uid: int,
) -> dict[str, Any]:
    """``containers.create`` arguments: sandbox.md's hardening baseline, every control.

    ``egress`` is only for package installers: their network is the internal
    egress network, whose only way out is the allow-list proxy. User code never
    runs in such a container.
    """
    inodes = settings.ISOL8_INODES
    config: dict[str, Any] = {
        "image": image or image_name(runtime),
        "network_mode": EGRESS_NETWORK if egress else "none",
        "read_only": True,
        "tmpfs": {
            "/tmp": f"rw,noexec,nosuid,nodev,size={limits.tmp_size},nr_inodes={inodes}",
            "/sandbox": (
                f"rw,exec,nosuid,nodev,size={limits.sandbox_size},nr_inodes={inodes},uid={uid},gid={uid}"
            ),
            # /etc/passwd and /etc/group point here: the launcher names the code user.
            IDENTITY_DIR: "rw,noexec,nosuid,nodev,size=64k,nr_inodes=16,mode=0755"
            + ("" if mode == "launcher" else ",uid=65534,gid=65534"),
        },
        "mem_limit": limits.memory,
        "memswap_limit": limits.memory,  # equal: no swap
        "pids_limit": limits.pids,
        "init": False,  # tini, from the image, is PID 1 (INIT)
        "nano_cpus": int(limits.cpu * 1e9),
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges", f"seccomp={seccomp_profile()}"],
        "cgroupns": "private",
        "ipc_mode": "private",
        "shm_size": settings.ISOL8_SHM_SIZE,
        "ulimits": [
            docker.types.Ulimit(name="nofile", soft=settings.ISOL8_NOFILE, hard=settings.ISOL8_NOFILE),
            docker.types.Ulimit(name="fsize", soft=settings.ISOL8_FSIZE, hard=settings.ISOL8_FSIZE),
            docker.types.Ulimit(name="core", soft=0, hard=0),
            docker.types.Ulimit(name="msgqueue", soft=settings.ISOL8_MSGQUEUE, hard=settings.ISOL8_MSGQUEUE),
        ],
        "labels": {LABEL_MANAGED: "true", LABEL_HOST: settings.ISOL8_WORKER_HOST, LABEL_UID: str(uid), **labels},
        "working_dir": "/sandbox",
        "environment": {},
        "log_config": docker.types.LogConfig(type="none"),
        "detach": True,
    }
    if mode == "launcher":
        # The launcher is the main process (under tini), as root with exactly
        # SETUID, SETGID and SETPCAP: the first two to start programs as the
        # code user, the third to empty their capability bounding set first.
        # Programs it starts have every capability set empty, the bounding set
        # included, and no-new-privileges keeps them that way.
        config.update(
            command=[*INIT, *LAUNCHER_ARGV, "serve", "--uid", str(uid)],
            user="0:0",
            cap_add=["SETUID", "SETGID", "SETPCAP"],
            stdin_open=True,
        )
    else:
        config.update(command=[*INIT, *LAUNCHER_ARGV, "keepalive", "--uid", str(uid)], user=KEEPALIVE_USER)
    return config


@dataclass
class Frame:
    kind: str
    payload: bytes

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.payload))


class FrameReader:
    """Reads launcher frames out of Docker's multiplexed attach/exec stream."""

    def __init__(self, sock: socket.socket, container_id: str) -> None:
        self.sock = sock
        self.container_id = container_id
        self.raw = bytearray()
        self.stdout = bytearray()

    def read(self, deadline: float) -> Frame:
        while True:
            if len(self.stdout) >= FRAME_HEADER.size:
                length, kind = FRAME_HEADER.unpack_from(self.stdout)
                end = FRAME_HEADER.size + length
                if len(self.stdout) >= end:
                    payload = bytes(self.stdout[FRAME_HEADER.size : end])
                    del self.stdout[:end]
                    if kind == ord("c"):
                        continue  # the acknowledgement of a cancel that came too late
                    return Frame(chr(kind), payload)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxError("the launcher did not answer in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(262144)
            except TimeoutError as exc:
                raise SandboxError("the launcher did not answer in time") from exc
            except OSError as exc:
                logger.warning("sandbox %s: connection lost: %s", self.container_id[:12], exc)
                raise SandboxError("lost the connection to the sandbox") from exc
            if not data:
                raise SandboxError("the sandbox closed its stream (container died?)")
            self.raw += data
            self._demux()

    def _demux(self) -> None:
        while len(self.raw) >= MUX_HEADER.size:
            stream, length = MUX_HEADER.unpack_from(self.raw)
            end = MUX_HEADER.size + length
            if len(self.raw) < end:
                return
            chunk = bytes(self.raw[MUX_HEADER.size : end])
            del self.raw[:end]
            if stream == 1:
                self.stdout += chunk
            else:
                logger.warning("launcher %s: %s", self.container_id[:12], chunk.decode(errors="replace"))


def _raw_socket(sock: Any) -> socket.socket:
    # docker-py hands back a SocketIO around the hijacked connection.
    return getattr(sock, "_sock", sock)


def encode_request(request: dict[str, Any]) -> bytes:
    body = json.dumps(request).encode()
    return struct.pack(">I", len(body)) + body


class LauncherTransport:
    """Requests over the attached stdin/stdout of a container whose main process is the launcher."""

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        wrapper = client().api.attach_socket(
            container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        )
        self._wrapper = wrapper  # keeps the HTTP response (and so the socket) alive
        self.sock = _raw_socket(wrapper)
        self.reader = FrameReader(self.sock, container_id)

    def call(
        self, request: dict[str, Any], deadline: float, until_nonce: str | None = None
    ) -> Iterator[Frame]:
        try:
            self.sock.sendall(encode_request(request))
        except OSError as exc:
            logger.warning("sandbox %s: connection lost: %s", self.container_id[:12], exc)
            raise SandboxError("lost the connection to the sandbox") from exc
        while True:
            frame = self.reader.read(deadline)
            yield frame
            if frame.kind in ("x", "r") and (until_nonce is None or until_nonce.encode() in frame.payload):
                return

    def send_control(self, request: dict[str, Any]) -> None:
        """Send a control request (cancel) while a run is in progress."""
        self.sock.sendall(encode_request(request))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class ExecTransport:
    """One ``docker exec`` of the launcher in ``once`` mode per request (the fallback path)."""

    def __init__(self, container_id: str, uid: int) -> None:
        self.container_id = container_id
        self.user = f"{uid}:{uid}"
        self._active: socket.socket | None = None

    def call(
        self, request: dict[str, Any], deadline: float, until_nonce: str | None = None
    ) -> Iterator[Frame]:
        # A fresh exec has no earlier frames: until_nonce needs no special care.
        api = client().api
        try:
            exec_id = api.exec_create(
                self.container_id,
                [*LAUNCHER_ARGV, "once"],
                stdin=True,
                stdout=True,
                stderr=True,
                user=self.user,
                workdir="/sandbox",
            )["Id"]
            wrapper = api.exec_start(exec_id, socket=True)
        except docker.errors.APIError as exc:
            logger.warning("docker exec in %s failed: %s", self.container_id[:12], exc.explanation or exc)
            raise SandboxError("docker exec into the sandbox failed") from exc
        sock = _raw_socket(wrapper)
        self._active = sock
        try:
            sock.sendall(encode_request(request))
            reader = FrameReader(sock, self.container_id)
            while True:
                frame = reader.read(deadline)
                yield frame
                if frame.kind in ("x", "r"):
                    return
        finally:
            self._active = None
            sock.close()

    def send_control(self, request: dict[str, Any]) -> None:
        active = self._active
        if active is not None:
            active.sendall(encode_request(request))

    def close(self) -> None:
        pass


@dataclass
class Sandbox:
    """A started sandbox container and the way to talk to its launcher."""

    container_id: str
    runtime: str
    limits: Limits
    mode: str
    transport: LauncherTransport | ExecTransport
    uid: int  # the code user's host uid, this sandbox's alone
    tenant: str = ""  # set once a tenant used it; it is never given to another one
    created_at: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    runs: int = 0
    broken: bool = False
    # The launcher is resetting on its own after a run; its reply is still to be read.
    reset_pending: bool = False
    image: str | None = None  # a prebuilt image, when not the runtime's own
    installed: set[str] = field(default_factory=set)  # package sets unpacked (sessions)
    # Held by whoever talks to the launcher of a session's sandbox (a run or a file operation).
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, request: dict[str, Any], timeout: float) -> Iterator[Frame]:
        """Send one request; yield its frames. Any failure marks the sandbox broken."""
        deadline = time.monotonic() + timeout
        try:
            yield from self.transport.call(request, deadline)
        except BaseException:
            # A half-read reply leaves the stream out of step: never reuse it.
            self.broken = True
            raise

    def reset(self, timeout: float = 10.0) -> bool:
        """Make the sandbox clean for its tenant's next run; False when it cannot be."""
        self.installed.clear()  # the reset empties /sandbox, packages included
        if self.reset_pending:
            self.reset_pending = False
            reply = self.pending_reply(timeout)
        else:
            reply = self.request({"op": "reset"}, timeout)
        return bool(reply.get("ok") and reply.get("clean"))

    def pending_reply(self, timeout: float) -> dict[str, Any]:
        """Read the reply to a request the launcher is already answering (launcher mode)."""
        assert isinstance(self.transport, LauncherTransport)
        deadline = time.monotonic() + timeout
        try:
            while True:
                frame = self.transport.reader.read(deadline)
                if frame.kind == "r":
                    return frame.json()
        except BaseException:
            self.broken = True
            raise

    def request(self, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """A non-run operation (reset, files, kill): its JSON reply."""
        reply: dict[str, Any] = {}
        for frame in self.call(request, timeout):
            if frame.kind in ("r", "x"):
                reply = frame.json()
        return reply

    def resync(self) -> None:
        """Skip whatever an earlier connection left unread, up to a fresh ping's reply.

        A re-attached launcher may still have frames of a run whose worker
        died; they must not be taken for the answer to the next request.
        """
        nonce = uuid.uuid4().hex
        deadline = time.monotonic() + 30.0
        try:
            for frame in self.transport.call({"op": "ping", "nonce": nonce}, deadline, until_nonce=nonce):
                if frame.kind == "r" and frame.json().get("pong") == nonce:
                    return
        except BaseException:
            self.broken = True
            raise

    def cancel(self) -> None:
        """Ask the launcher to kill the run in progress (from another thread)."""
        try:
            self.transport.send_control({"op": "cancel"})
        except OSError as exc:
            logger.warning("cancel of %s failed: %s", self.container_id[:12], exc)

    def destroy(self) -> None:
        self.transport.close()
        remove_container(self.container_id)
        uids().release(self.uid)


def create_sandbox(
    *,
    runtime: str,
    limits: Limits,
    labels: dict[str, str],
    mode: str | None = None,
    egress: bool = False,
    image: str | None = None,
) -> Sandbox:
    """Create and start a hardened container; returns once its launcher can take requests."""
    mode = mode or settings.ISOL8_SANDBOX_MODE
    uid = uids().allocate()
    config = hardened_config(
        runtime=runtime,
        limits=limits,
        labels={LABEL_RUNTIME: runtime, LABEL_MODE: mode, **labels},
        mode=mode,
        egress=egress,
        image=image,
        uid=uid,
    )
    try:
        container = client().containers.create(**config)
    except docker.errors.ImageNotFound as exc:
        uids().release(uid)
        raise SandboxError(
            f"sandbox image {config['image']} is missing: run `python manage.py build_images`"
        ) from exc
    except docker.errors.APIError as exc:
        uids().release(uid)
        logger.error("creating a %s sandbox failed: %s", runtime, exc.explanation or exc)
        raise SandboxError("the Docker engine refused to create the sandbox (see the worker's log)") from exc
    except (requests.ConnectionError, requests.Timeout, docker.errors.DockerException) as exc:
        uids().release(uid)
        logger.error("Docker is not reachable: %s", exc)
        raise DockerUnavailableError("Docker is not reachable from the worker; try again shortly") from exc
    try:
        transport: LauncherTransport | ExecTransport
        if mode == "launcher":
            # Attach before start so nothing the launcher says can be missed.
            transport = LauncherTransport(container.id)
            container.start()
        else:
            container.start()
            transport = ExecTransport(container.id, uid)
    except (OSError, requests.RequestException, docker.errors.DockerException) as exc:
        remove_container(container.id)
        uids().release(uid)
        logger.error("starting sandbox %s failed: %s", container.id[:12], exc)
        raise SandboxError("the sandbox container did not start (see the worker's log)") from exc
    return Sandbox(
        container_id=container.id, runtime=runtime, limits=limits, mode=mode, transport=transport, image=image,
        uid=uid,
    )


def adopt_sandbox(*, container_id: str, runtime: str, limits: Limits) -> Sandbox | None:
    """Reconnect to a running container (a session's, after a worker restart)."""
    try:
        container = client().containers.get(container_id)
    except docker.errors.NotFound:
        return None
    if container.status != "running":
        remove_container(container_id)
        return None
    mode = container.labels.get(LABEL_MODE, settings.ISOL8_SANDBOX_MODE)
    uid = int(container.labels.get(LABEL_UID, "1000"))
    transport: LauncherTransport | ExecTransport = (
        LauncherTransport(container_id) if mode == "launcher" else ExecTransport(container_id, uid)
    )
    box = Sandbox(
        container_id=container_id, runtime=runtime, limits=limits, mode=mode, transport=transport, uid=uid
    )
    box.resync()
    return box


def remove_container(container_id: str) -> None:
    try:
        client().api.remove_container(container_id, force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: removal already in progress
            logger.warning("removing container %s failed: %s", container_id[:12], exc)


# --------------------------------------------------------------- prebuilt


PREBUILT_INSTALL = {
    "python": ["python3", "-m", "pip", "install", "--no-cache-dir", "--break-system-packages",
               "--disable-pip-version-check"],
    "node": ["npm", "install", "--global", "--no-audit", "--no-fund"],
}


def build_prebuilt(*, tag: str, runtime: str, packages: list[str], log: Callable[[str], None]) -> None:
    """Bake ``packages`` into ``tag`` on top of the runtime's image (isol8's prebuiltImages).

    Skipped when ``tag`` exists and was built from the current runtime image
    with the same packages. Build-time installs are the operator's own config,
    so they use the build's network directly.
    """
    base = image_name(runtime)
    wanted = ",".join(sorted(packages))
    try:
        existing = client().images.get(tag)
        labels = existing.labels or {}
        if labels.get("isol8.base") == base and labels.get("isol8.packages") == wanted:
            log(f"{tag} is up to date")
            return
    except docker.errors.ImageNotFound:
        pass
    log(f"building prebuilt image {tag} ({runtime}: {wanted})")
    install = json.dumps([*PREBUILT_INSTALL[runtime], *packages])
    dockerfile = "\n".join([
        f"FROM {base}",
        "USER root",
        "ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt",
        f"RUN {install}",
        f'LABEL isol8.managed="true" isol8.base="{base}" isol8.packages="{wanted}" isol8.prebuilt="{tag}"',
    ])
    with tempfile.TemporaryDirectory(prefix="isol8-prebuilt-") as context:
        (Path(context) / "Dockerfile").write_text(dockerfile + "\n")
        _build(tag, runtime, context, log)


# ------------------------------------------------------------------ egress


EGRESS_NETWORK = "isol8-egress"
PROXY_ALIAS = "isol8-proxy"
PROXY_PORT = 3128
LABEL_ROLE = "isol8.role"
_egress_lock = threading.Lock()


def egress_proxy_url() -> str:
    return f"http://{PROXY_ALIAS}:{PROXY_PORT}"


def ensure_egress() -> str:
    """The internal egress network and this host's allow-list proxy on it; its id.

    The network is ``internal`` (Docker gives it no route out); the proxy is
    on it and on the default bridge, and lets CONNECT through only to the
    hosts of ISOL8_EGRESS_ALLOW.
    """
    with _egress_lock:
        docker_client = client()
        networks = docker_client.networks.list(names=[EGRESS_NETWORK])
        network = next((n for n in networks if n.name == EGRESS_NETWORK), None)
        if network is None:
            network = docker_client.networks.create(
                EGRESS_NETWORK, driver="bridge", internal=True, labels={LABEL_MANAGED: "true"}
            )
        running = list_managed(host=settings.ISOL8_WORKER_HOST, role="egress-proxy")
        alive = [c for c in running if c.status == "running"]
        for stale in running:
            if stale not in alive:
                remove_container(stale.id)
        if alive:
            return alive[0].id
        proxy = docker_client.containers.create(
            image_name("python"),
            [*LAUNCHER_ARGV[:2], "/opt/isol8/isol8_egress_proxy.py"],
            user=KEEPALIVE_USER,
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges", f"seccomp={seccomp_profile()}"],
            mem_limit=256 * 1024 * 1024,
            pids_limit=64,
            environment={
                "ISOL8_EGRESS_ALLOW": ",".join(settings.ISOL8_EGRESS_ALLOW),
                "ISOL8_EGRESS_PORT": str(PROXY_PORT),
            },
            labels={LABEL_MANAGED: "true", LABEL_HOST: settings.ISOL8_WORKER_HOST, LABEL_ROLE: "egress-proxy"},
            detach=True,
        )
        network.connect(proxy, aliases=[PROXY_ALIAS])
        proxy.start()
        return str(proxy.id)


@dataclass(frozen=True)
class ManagedContainer:
    id: str
    labels: dict[str, str]
    status: str
    created: float  # unix time


def sync_uids() -> None:
    """Tell the uid allocator which uids this engine's sandboxes carry (any worker host's)."""
    uids().sync({int(c.labels[LABEL_UID]) for c in list_managed() if c.labels.get(LABEL_UID, "").isdigit()})


def list_managed(**labels: str) -> list[ManagedContainer]:
    """Every container this service started (on this engine), filtered by labels."""
    filters = [f"{LABEL_MANAGED}=true", *(f"isol8.{k}={v}" for k, v in labels.items())]
    found = client().api.containers(all=True, filters={"label": filters})
    return [
        ManagedContainer(
            id=c["Id"], labels=c.get("Labels") or {}, status=c.get("State", ""), created=c.get("Created", 0)
        )
        for c in found
    ]


def container_attrs(container_id: str) -> dict[str, Any]:
    """``docker inspect`` of a container (tests and the admin use it)."""
    return dict(client().api.inspect_container(container_id))


def container_cpu_ns(container_id: str) -> int | None:
    """CPU time the container has used so far (ns), from the engine; None when it cannot say."""
    try:
        stats = client().api.stats(container_id, stream=False, one_shot=True)
        return int(stats["cpu_stats"]["cpu_usage"]["total_usage"])
    except (docker.errors.DockerException, requests.RequestException, KeyError, TypeError, ValueError):
        return None


def container_running(container_id: str) -> bool:
    try:
        return bool(client().api.inspect_container(container_id)["State"]["Running"])
    except docker.errors.NotFound:
        return False
