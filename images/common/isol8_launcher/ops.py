"""The launcher's operations, and the one object that holds all of its state."""

from __future__ import annotations

import base64
import errno
import sys
from collections.abc import Callable
from typing import Any

from isol8_launcher.forkclient import ForkServer
from isol8_launcher.kernel import Cells
from isol8_launcher.paths import (
    RUN_FILE_ROOTS,
    SANDBOX,
    SCRATCH_DIRS,
    pack_tar,
    read_user_file,
    unpack_tar,
    wipe_scratch,
    write_user_file,
)
from isol8_launcher.procs import CPU_USAGE_FILES, CodeUser, Spawn, cgroup_value, remove_sysv_ipc
from isol8_launcher.protocol import FrameWriter, OpError, read_request
from isol8_launcher.run import INPUT_OPS, Runner

Op = Callable[[dict[str, Any]], dict[str, Any]]


class Launcher:
    """One launcher process: its code user, its streams, the requests held back, the fork server.

    Requests come from ``requests_fd`` (the launcher's stdin) and frames go
    to ``writer`` (its stdout). ``spawn`` starts a program (the code user's
    ``spawn`` unless given); ``sandbox`` is the file API's root, ``run_roots``
    where a run's files may be, ``scratch_dirs`` what a reset empties.
    """

    def __init__(
        self,
        user: CodeUser,
        *,
        writer: FrameWriter | None = None,
        requests_fd: int = 0,
        spawn: Spawn | None = None,
        sandbox: str = SANDBOX,
        run_roots: tuple[str, ...] = RUN_FILE_ROOTS,
        scratch_dirs: tuple[str, ...] = SCRATCH_DIRS,
    ) -> None:
        self.user = user
        self.writer = writer if writer is not None else FrameWriter(1)
        self.requests_fd = requests_fd
        self.sandbox = sandbox
        self.scratch_dirs = scratch_dirs
        # Requests that arrived while a run was in progress, served in order after it.
        self.pending: list[dict[str, Any]] = []
        # Set by the "forkserver" operation (python sandboxes in serve mode).
        self.forkserver_config: dict[str, Any] | None = None
        self.forkserver: ForkServer | None = None
        self.runner = Runner(
            writer=self.writer,
            control_fd=requests_fd,
            pending=self.pending,
            spawn=spawn if spawn is not None else user.spawn,
            kill=user.kill_all,
            as_code_user=user.run_as,
            forkserver_for=self.python_forkserver,
            roots=run_roots,
        )
        # A stateful session's interpreter (configured by the "kernel" op) and its cells.
        self.cells = Cells(
            runner=self.runner,
            spawn=lambda argv, env, cwd, fds: user.spawn(argv, env, cwd, None, pass_fds=fds),
            kill=user.kill_all,
            as_code_user=user.run_as,
        )
        self.ops: dict[str, Op] = {
            "reset": self.op_reset,
            "get_file": self.op_get_file,
            "put_file": self.op_put_file,
            "kill": self.op_kill,
            "stats": self.op_stats,
            "get_tar": self.op_get_tar,
            "put_tar": self.op_put_tar,
            "forkserver": self.op_forkserver,
            "ping": self.op_ping,
            "kernel": self.cells.configure,
            "kernel_restart": self.cells.restart,
        }

    def next_request(self) -> dict[str, Any] | None:
        """The next request to serve: one held back during a run first, else one read now (None at EOF)."""
        return self.pending.pop(0) if self.pending else read_request(self.requests_fd)

    def handle(self, req: dict[str, Any]) -> None:
        """Serve one request: a run (``x`` frame), a late cancel (``c``), anything else (``r``)."""
        op = req.get("op")
        if op == "run":
            self.runner.run_request(req)
            if req.get("resetAfter"):
                # One-shot sandboxes are reset right after the result went out,
                # while the worker records it: the next run does not wait for it.
                self.handle({"op": "reset"})
            return
        if op == "cell":
            self.cells.run_cell(req)
            return
        if op in INPUT_OPS:
            return  # live input for a run that has ended: dropped, and never answered
        if op == "cancel":
            # A cancel that arrived after its run ended: acknowledged with a frame
            # the worker skips, so the next request's reply stays in step.
            self.writer.send_json(b"c", {"late": True})
            return
        handler = self.ops.get(str(op))
        try:
            if handler is None:
                raise OpError("bad_request", f"unknown op {op!r}")
            reply = handler(req)
            reply["ok"] = True
        except OpError as exc:
            reply = {"ok": False, "error": exc.message, "code": exc.code}
        self.writer.send_json(b"r", reply)

    # ---------------------------------------------------------- the fork server

    def python_forkserver(self, env: dict[str, str]) -> ForkServer | None:
        """The fork server if it can serve a run with this environment."""
        if self.forkserver is not None and self.forkserver.serves(env):
            return self.forkserver
        return None

    def ensure_forkserver(self) -> None:
        """Have a live fork server, and the next run's process forked, when python runs use one."""
        if self.forkserver_config is None:
            return
        try:
            if self.forkserver is None or not self.forkserver.alive():
                if self.forkserver is not None:
                    self.forkserver.dismiss()
                self.forkserver = None
                self.forkserver = ForkServer(self.forkserver_config["argv"], self.forkserver_config["env"], self.user)
            self.forkserver.prefork()
        except (OSError, OpError) as exc:
            print(f"isol8 launcher: python fork server failed: {exc}", file=sys.stderr)

    def op_forkserver(self, req: dict[str, Any]) -> dict[str, Any]:
        """Fork python runs from a fork server started with (argv, env)."""
        if self.user.is_current():
            raise OpError("bad_request", "the python fork server only exists in serve mode")
        self.forkserver_config = {"argv": list(req["argv"]), "env": dict(req["env"])}
        return {}

    # ------------------------------------------------------------------ the others

    def op_reset(self, _: dict[str, Any]) -> dict[str, Any]:
        """Kill every process of the code user, then empty every writable place.

        Neither step creates a process; the wipe only happens once nothing of
        the code user is left alive to write again, and it acts as the code user.
        """
        if not self.user.kill_all():
            return {"clean": False}
        self.user.run_as(self._wipe)
        return {"clean": True}

    def _wipe(self) -> None:
        wipe_scratch(self.user.uid, self.scratch_dirs)
        remove_sysv_ipc()

    def op_get_file(self, req: dict[str, Any]) -> dict[str, Any]:
        path = str(req["path"])
        max_bytes = int(req.get("maxBytes", 10 * 1024 * 1024))
        roots = (self.sandbox,)
        content = self.user.run_as(lambda: base64.b64encode(read_user_file(path, max_bytes, roots)).decode())
        return {"content": content}

    def op_put_file(self, req: dict[str, Any]) -> dict[str, Any]:
        path = str(req["path"])
        content = base64.b64decode(req["content"])

        def put() -> None:
            try:
                write_user_file(path, content, roots=(self.sandbox,))
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise OpError("sandbox_full", f"no space left in {self.sandbox}") from None
                raise OpError("validation_error", f"cannot write {path}: {exc.strerror}") from None

        self.user.run_as(put)
        return {}

    def op_get_tar(self, req: dict[str, Any]) -> dict[str, Any]:
        """A gzipped tar of some paths under /sandbox (an installer's packages)."""
        names = [str(n) for n in req["paths"]]
        max_bytes = int(req.get("maxBytes", 256 * 1024 * 1024))
        return {"content": self.user.run_as(lambda: pack_tar(names, max_bytes, self.sandbox))}

    def op_put_tar(self, req: dict[str, Any]) -> dict[str, Any]:
        """Unpack a gzipped tar into /sandbox, as the code user (installed packages)."""
        data = base64.b64decode(req["content"])
        try:
            self.user.run_as(lambda: unpack_tar(data, self.sandbox))
        except OpError as exc:
            if "No space" in exc.message:
                raise OpError("sandbox_full", f"no space left in {self.sandbox} for the packages") from None
            raise
        return {}

    def op_kill(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"clean": self.user.kill_all()}

    def op_stats(self, _: dict[str, Any]) -> dict[str, Any]:
        """The container's CPU time so far (its cgroup's cpuacct), for metering sessions."""
        return {"cpuNs": cgroup_value(CPU_USAGE_FILES)}

    def op_ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"pong": req.get("nonce")}
