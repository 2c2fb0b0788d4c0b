"""Sandbox containers: the hardening baseline, the launcher's transports, and the containers' lifecycle.

Two transports carry the launcher protocol (sandbox/protocol.py):

* ``LauncherTransport``: the container's main process is the launcher; requests
  go over the container's attached stdin/stdout. No ``docker exec`` per run.
* ``ExecTransport``: the fallback. The container only keeps alive; each request
  is a ``docker exec`` of the launcher in ``once`` mode, as the code user.

Everything above this module (pool, run, the worker's sessions) is the same for
both. Docker itself is reached only through sandbox/dockerapi.py.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from sandbox import dockerapi, gateway
from sandbox.config import current
from sandbox.errors import SandboxError
from sandbox.images import image_name
from sandbox.protocol import END_KINDS, Frame, FrameReader, encode_request
from sandbox.spec import Limits

logger = logging.getLogger(__name__)

KEEPALIVE_USER = "65534:65534"  # nobody: the exec-mode keep-alive never shares the code's uid
LAUNCHER_ARGV = ["python3", "-I", "/opt/isol8/launch.py"]
# The containers' init (PID 1, reaps orphans), shipped in the images: Docker's
# own `init` would bind-mount a host binary into every sandbox.
INIT = ["/usr/bin/tini", "--"]
IDENTITY_DIR = "/run/isol8"  # /etc/passwd and /etc/group point here; the launcher names the code user
EGRESS_NETWORK = "isol8-egress"  # the internal network package installers use (sandbox/egress.py)
LABEL_MANAGED = "isol8.managed"
LABEL_HOST = "isol8.host"
LABEL_TENANT = "isol8.tenant"
LABEL_SESSION = "isol8.session"
LABEL_RUNTIME = "isol8.runtime"
LABEL_POOL = "isol8.pool"
LABEL_MODE = "isol8.mode"
LABEL_UID = "isol8.uid"
LABEL_ROLE = "isol8.role"
LABEL_CREATION = "isol8.creation"  # a nonce per creation: the sweep spares a container still being made
LABEL_EGRESS = "isol8.egress"  # network "filtered": the name of the sandbox's egress lane directory


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


@cache
def uids() -> UidAllocator:
    return UidAllocator(current().uid_base, current().uid_count)


def sync_uids() -> None:
    """Tell the uid allocator which uids this engine's sandboxes carry (any worker host's)."""
    uids().sync({int(c.labels[LABEL_UID]) for c in list_managed() if c.labels.get(LABEL_UID, "").isdigit()})


@cache
def seccomp_profile() -> str:
    """The seccomp profile as JSON text (the SDK wants the text, not a path)."""
    return json.dumps(json.loads((current().images_dir / "seccomp.json").read_text()))


def hardened_config(
    *,
    runtime: str,
    limits: Limits,
    labels: dict[str, str],
    mode: str,
    uid: int,
    egress: bool = False,
    image: str | None = None,
    lane_dir: str | None = None,
) -> dict[str, Any]:
    """``containers.create`` arguments: sandbox.md's hardening baseline, every control.

    ``egress`` is only for package installers: their network is the internal
    egress network, whose only way out is the allow-list proxy. User code never
    runs in such a container.

    ``lane_dir`` (network "filtered"): the network stays ``none``; the
    directory of the sandbox's egress gateway socket is mounted read-only at
    gateway.MOUNT_DIR and the launcher starts its relay to it
    (sandbox/gateway.py): that socket is the sandbox's only way out.
    """
    cfg = current()
    inodes = cfg.inodes
    config: dict[str, Any] = {
        "image": image or image_name(runtime),
        "network_mode": EGRESS_NETWORK if egress else "none",
        "read_only": True,
        "tmpfs": {
            "/tmp": f"rw,noexec,nosuid,nodev,size={limits.tmp_size},nr_inodes={inodes}",
            "/sandbox": (
                f"rw,exec,nosuid,nodev,size={limits.sandbox_size},nr_inodes={inodes},uid={uid},gid={uid}"
            ),
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
        "shm_size": cfg.shm_size,
        "ulimits": [
            dockerapi.ulimit("nofile", cfg.nofile),
            dockerapi.ulimit("fsize", cfg.fsize),
            dockerapi.ulimit("core", 0),
            dockerapi.ulimit("msgqueue", cfg.msgqueue),
        ],
        "labels": {LABEL_MANAGED: "true", LABEL_HOST: cfg.host, LABEL_UID: str(uid), **labels},
        "working_dir": "/sandbox",
        "environment": {},
        "log_config": dockerapi.no_logs(),
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
    if lane_dir is not None:
        config["volumes"] = {lane_dir: {"bind": gateway.MOUNT_DIR, "mode": "ro"}}
        config["labels"][LABEL_EGRESS] = os.path.basename(lane_dir)
        config["command"] = [*config["command"], "--egress", gateway.lane_socket(gateway.MOUNT_DIR)]
    return config


# ------------------------------------------------------------------ transports


class LauncherTransport:
    """Requests over the attached stdin/stdout of a container whose main process is the launcher."""

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        self.sock, self._wrapper = dockerapi.attach(container_id)  # the wrapper keeps the socket open
        self.reader = FrameReader(self.sock, container_id)
        # A request and the control messages sent during its run (cancel, live
        # input) come from different threads; each goes out whole.
        self.send_lock = threading.Lock()

    def call(
        self,
        request: dict[str, Any],
        deadline: float,
        until_nonce: str | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> Iterator[Frame]:
        try:
            with self.send_lock:
                self.sock.sendall(encode_request(request))
        except OSError as exc:
            logger.warning("sandbox %s: connection lost: %s", self.container_id[:12], exc)
            raise SandboxError("lost the connection to the sandbox") from exc
        if on_sent is not None:
            on_sent()
        while True:
            frame = self.reader.read(deadline)
            yield frame
            if frame.kind in END_KINDS and (until_nonce is None or until_nonce.encode() in frame.payload):
                return

    def send_control(self, request: dict[str, Any]) -> None:
        """Send a control request (cancel, live input) while a run is in progress."""
        with self.send_lock:
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
        self._active: Any = None
        self.send_lock = threading.Lock()

    def call(
        self,
        request: dict[str, Any],
        deadline: float,
        until_nonce: str | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> Iterator[Frame]:
        # A fresh exec has no earlier frames: until_nonce needs no special care.
        sock, _wrapper = dockerapi.exec_attach(
            self.container_id, [*LAUNCHER_ARGV, "once"], user=self.user, workdir="/sandbox"
        )
        try:
            with self.send_lock:
                self._active = sock
                sock.sendall(encode_request(request))
            if on_sent is not None:
                on_sent()
            reader = FrameReader(sock, self.container_id)
            while True:
                frame = reader.read(deadline)
                yield frame
                if frame.kind in END_KINDS:
                    return
        finally:
            with self.send_lock:
                self._active = None
            sock.close()

    def send_control(self, request: dict[str, Any]) -> None:
        with self.send_lock:
            if self._active is not None:
                self._active.sendall(encode_request(request))

    def close(self) -> None:
        pass


# ------------------------------------------------------------------- sandboxes

# The containers this process holds: every Sandbox object alive here (weakly,
# so one dropped without destroy() is an orphan again) and those being created
# right now, known by the nonce label they were created with (their id is not
# known until Docker's create call returns, which under load can take longer
# than ISOL8_ORPHAN_MIN_AGE). The orphan sweep never removes these, however
# old they are: a warm sandbox on its way from the pool to a run, one being
# reset, a package install that takes minutes.
_held: weakref.WeakValueDictionary[str, Sandbox] = weakref.WeakValueDictionary()
_creating: set[str] = set()  # nonces (LABEL_CREATION) of creations in progress
_held_lock = threading.Lock()


def held_container_ids() -> set[str]:
    """Containers a live Sandbox object of this process holds."""
    with _held_lock:
        return set(_held.keys())


def being_created(labels: dict[str, str]) -> bool:
    """A container this process is creating right now (by its labels)."""
    with _held_lock:
        return labels.get(LABEL_CREATION) in _creating


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
    lane_dir: str | None = None  # network "filtered": the directory of its egress socket (``lane``)

    def __post_init__(self) -> None:
        with _held_lock:
            _held[self.container_id] = self

    def call(
        self, request: dict[str, Any], timeout: float, on_sent: Callable[[], None] | None = None
    ) -> Iterator[Frame]:
        """Send one request; yield its frames. Any failure marks the sandbox broken.

        ``on_sent`` is called once the request is on its way: control messages
        for it may follow from then on.
        """
        deadline = time.monotonic() + timeout
        try:
            yield from self.transport.call(request, deadline, on_sent=on_sent)
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
            if frame.kind in END_KINDS:
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
        self.send_control({"op": "cancel"})

    def send_control(self, message: dict[str, Any]) -> bool:
        """A control message for the run in progress (from another thread); False when it could not go."""
        try:
            self.transport.send_control(message)
        except OSError as exc:
            logger.warning("%s to %s failed: %s", message.get("op"), self.container_id[:12], exc)
            return False
        return True

    @property
    def lane(self) -> str | None:
        """The host path of this sandbox's egress gateway socket (network "filtered"), else None."""
        return gateway.lane_socket(self.lane_dir) if self.lane_dir else None

    def destroy(self) -> None:
        self.transport.close()
        dockerapi.remove_container(self.container_id)
        uids().release(self.uid)
        if self.lane is not None:
            gateway.default_gateway().close(self.lane)
            remove_lane_dir(self.lane_dir)
        with _held_lock:
            _held.pop(self.container_id, None)


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
    mode = mode or current().mode
    uid = uids().allocate()
    nonce = uuid.uuid4().hex
    lane_dir = make_lane_dir() if limits.network == "filtered" else None
    config = hardened_config(
        runtime=runtime,
        limits=limits,
        labels={LABEL_RUNTIME: runtime, LABEL_MODE: mode, LABEL_CREATION: nonce, **labels},
        mode=mode,
        egress=egress,
        image=image,
        uid=uid,
        lane_dir=lane_dir,
    )
    with _held_lock:
        _creating.add(nonce)
    try:
        container_id = dockerapi.create_container(config)
    except SandboxError:
        uids().release(uid)
        remove_lane_dir(lane_dir)
        with _held_lock:
            _creating.discard(nonce)
        raise
    try:
        transport: LauncherTransport | ExecTransport
        if mode == "launcher":
            # Attach before start so nothing the launcher says can be missed.
            transport = LauncherTransport(container_id)
            dockerapi.start_container(container_id)
        else:
            dockerapi.start_container(container_id)
            transport = ExecTransport(container_id, uid)
        return Sandbox(
            container_id=container_id, runtime=runtime, limits=limits, mode=mode, transport=transport,
            image=image, uid=uid, lane_dir=lane_dir,
        )
    except SandboxError:
        dockerapi.remove_container(container_id)
        uids().release(uid)
        remove_lane_dir(lane_dir)
        raise
    finally:
        with _held_lock:
            _creating.discard(nonce)


def adopt_sandbox(*, container_id: str, runtime: str, limits: Limits) -> Sandbox | None:
    """Reconnect to a running container (a session's, after a worker restart); None when it is gone."""
    attrs = dockerapi.inspect_container(container_id)
    if attrs is None:
        return None
    if not attrs["State"]["Running"]:
        dockerapi.remove_container(container_id)
        return None
    labels = attrs["Config"]["Labels"] or {}
    mode = labels.get(LABEL_MODE, current().mode)
    uid = int(labels.get(LABEL_UID, "1000"))
    transport: LauncherTransport | ExecTransport = (
        LauncherTransport(container_id) if mode == "launcher" else ExecTransport(container_id, uid)
    )
    lane = labels.get(LABEL_EGRESS)
    box = Sandbox(
        container_id=container_id, runtime=runtime, limits=limits, mode=mode, transport=transport, uid=uid,
        lane_dir=str(_lanes_root() / lane) if lane else None,
    )
    box.resync()
    return box


def remove_container(container_id: str) -> None:
    dockerapi.remove_container(container_id)


# ------------------------------------------------------------ egress lanes


def _lanes_root() -> Path:
    cfg = current()
    return cfg.egress_dir / cfg.host  # hosts may share the directory: each sweeps its own


def make_lane_dir() -> str:
    """A new directory for a filtered sandbox's egress socket (world-traversable: the relay is another uid)."""
    root = _lanes_root()
    root.mkdir(parents=True, exist_ok=True)
    path = root / secrets.token_hex(8)
    if len(gateway.lane_socket(str(path)).encode()) > 107:
        raise SandboxError("ISOL8_EGRESS_DIR is too long a path for a Unix socket; pick a shorter one")
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    return str(path)


def remove_lane_dir(lane_dir: str | None) -> None:
    if lane_dir is not None:
        shutil.rmtree(lane_dir, ignore_errors=True)


def remove_stale_lane_dirs(min_age: float = 0.0) -> int:
    """Lane directories no container of this host names any more (a crash, a removed container); how many.

    Those younger than ``min_age`` seconds are spared: their container may be being created.
    """
    root = _lanes_root()
    if not root.is_dir():
        return 0
    named = {c.labels.get(LABEL_EGRESS) for c in list_managed(host=current().host)}
    now = time.time()
    stale = [p for p in root.iterdir() if p.is_dir() and p.name not in named and now - p.stat().st_mtime >= min_age]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


# ---------------------------------------------------------------- inventory


@dataclass(frozen=True)
class ManagedContainer:
    id: str
    labels: dict[str, str]
    status: str
    created: float  # unix time


def list_managed(**labels: str) -> list[ManagedContainer]:
    """Every container this service started (on this engine), filtered by labels (``host=...``)."""
    filters = [f"{LABEL_MANAGED}=true", *(f"isol8.{k}={v}" for k, v in labels.items())]
    return [
        ManagedContainer(
            id=c["Id"], labels=c.get("Labels") or {}, status=c.get("State", ""), created=c.get("Created", 0)
        )
        for c in dockerapi.list_containers(filters)
    ]


def container_attrs(container_id: str) -> dict[str, Any]:
    """``docker inspect`` of a container (tests and the admin use it); {} when it is gone."""
    return dockerapi.inspect_container(container_id) or {}


def container_state(container_id: str) -> str:
    """How a container is, for a log line: its status, exit code and OOM flag (or that it is gone)."""
    try:
        state = container_attrs(container_id).get("State") or {}
    except SandboxError as exc:
        return f"state unknown: {exc}"
    if not state:
        return "the container is gone"
    return f"status {state.get('Status')}, exit code {state.get('ExitCode')}, oom-killed {state.get('OOMKilled')}"


def container_running(container_id: str) -> bool:
    attrs = dockerapi.inspect_container(container_id)
    return bool(attrs and attrs["State"]["Running"])


def containers_cpu_ns(container_ids: Iterable[str]) -> dict[str, int | None]:
    """CPU time (ns) each container has used so far; None for one the engine cannot say about."""
    return dockerapi.containers_cpu_ns(container_ids)


def docker_ping() -> bool:
    return dockerapi.ping()
