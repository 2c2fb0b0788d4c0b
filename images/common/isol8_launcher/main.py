"""The launcher's modes: ``serve``, ``once`` and ``keepalive`` (see the package's docstring).

``serve`` and ``keepalive`` take ``--uid N`` (the code user) and, for a
``network: "filtered"`` sandbox, ``--egress SOCKET``: the gateway's Unix
socket, which the egress relay (relay.py, a process of its own as uid 65534)
connects 127.0.0.1:3128 to.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

from isol8_launcher import relay
from isol8_launcher.ops import Launcher
from isol8_launcher.procs import CodeUser
from isol8_launcher.protocol import OpError, read_request

IDENTITY_DIR = "/run/isol8"  # a tmpfs; /etc/passwd and /etc/group are symlinks into it


def write_identity(uid: int, gid: int, *, etc: str = "/etc", identity_dir: str = IDENTITY_DIR) -> None:
    """Name this sandbox's code uid ``sandbox`` in /etc/passwd and /etc/group.

    Each sandbox has a host uid of its own, which no image can know in
    advance; programs that look their user up (whoami, git, ssh, npm) find it.
    """
    for name, line in (
        ("passwd", f"sandbox:x:{uid}:{gid}:isol8 sandbox:/sandbox:/bin/bash\n"),
        ("group", f"sandbox:x:{gid}:\n"),
    ):
        with open(f"{etc}/{name}.base") as fh:
            base = [entry for entry in fh.read().splitlines(keepends=True) if not entry.startswith("sandbox:")]
        path = f"{identity_dir}/{name}"
        with open(path + ".new", "w") as fh:
            fh.write("".join(base) + line)
        os.chmod(path + ".new", 0o644)
        os.replace(path + ".new", path)


def option(args: list[str], name: str) -> str | None:
    """The value that follows ``name`` in ``args`` (``--egress SOCKET``); None without ``name``."""
    if name not in args:
        return None
    at = args.index(name) + 1
    if at == len(args) or args[at].startswith("--"):
        raise ValueError(f"{name} needs a value")
    return args[at]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv if argv is None else argv
    mode = args[1] if len(args) > 1 else "serve"
    # SIGPIPE stays ignored (Python's default): a program that exits without
    # reading its stdin makes our write fail with EPIPE, which the run loop
    # handles; it must not kill the launcher. Programs get SIG_DFL back
    # (procs.default_signals). A worker that went away ends serve().
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    user = CodeUser.from_args(args[2:])
    if mode == "once":
        req = read_request(0)
        if req is not None:
            Launcher(user).handle(req)
        return 0
    if mode not in ("serve", "keepalive"):
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    try:
        egress = option(args[2:], "--egress")
    except ValueError as exc:
        print(f"isol8 launcher: {exc}", file=sys.stderr)
        return 2
    if mode == "keepalive":
        keepalive(user, egress=egress)
    return serve(user, egress=egress)


def start_relay(user: CodeUser, egress: str | None) -> None:
    """With ``--egress``: start the egress relay (relay.py), without waiting for it.

    It runs as uid 65534, never as root or as the code user (whose reset kills
    every process of its uid); if it cannot start, the sandbox has no way out.
    """
    if egress is None:
        return
    if user.uid == relay.RELAY_UID:
        print(f"isol8 launcher: no egress relay: the code user is uid {relay.RELAY_UID}", file=sys.stderr)
        return
    relay.start(egress)


def keepalive(user: CodeUser, *, egress: str | None = None) -> NoReturn:
    """The exec fallback's main process (no capability, not the code user).

    It starts the egress relay (with ``egress``), names the code user, then
    waits to be stopped.
    """
    start_relay(user, egress)
    write_identity(user.uid, user.gid)
    while True:
        signal.pause()


def serve(user: CodeUser, *, egress: str | None = None) -> int:
    """The container's main process: requests from stdin, frames to stdout, until stdin ends.

    With ``egress``, the egress relay is started first.
    """
    if user.is_current() or os.getuid() != 0:
        print("serve mode runs as root with --uid naming the code user", file=sys.stderr)
        return 2
    # Root's supplementary groups would grant group access while acting as the code user.
    os.setgroups([])
    os.umask(0o022)
    start_relay(user, egress)
    write_identity(user.uid, user.gid)
    launcher = Launcher(user)
    while True:
        try:
            req = launcher.next_request()
        except (OpError, ValueError) as exc:
            # A malformed request means the stream is out of sync: stop, and
            # let the worker replace this container.
            print(f"isol8 launcher: bad request: {exc}", file=sys.stderr)
            return 3
        if req is None:
            return 0
        try:
            launcher.handle(req)
        except BrokenPipeError:
            return 0  # our stdout is gone: nobody reads the answers any more
        # After the answer went out (the first time, or when it died): start
        # the python fork server while the worker has nothing to ask.
        launcher.ensure_forkserver()
        launcher.cells.ensure()
