"""The launcher's side of the python fork server (the server's program is forkserver.py)."""

from __future__ import annotations

import marshal
import os
import select
import signal
import socket

from isol8_launcher.procs import CodeUser, Process, close_fds_except, default_signals, fork
from isol8_launcher.protocol import OpError

# The fork server's program, run as a file next to this one (root-owned, like
# the whole package).
FORKSERVER_PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "forkserver.py")
# Variables read when an interpreter starts: the fork server only serves runs
# whose values for these equal the ones it was started with.
STARTUP_ENV_PREFIXES = ("PYTHON", "LC_", "LANG", "TZ", "HOME", "PATH")


def startup_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(STARTUP_ENV_PREFIXES)}


def readable(fd: int) -> bool:
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready)


class ForkServer:
    """A python3 started once per sandbox that forks the process of each python run.

    Starting CPython costs ~20 ms of CPU in a container; a fork ~1 ms. The
    server runs as root (the code cannot signal it, read it or ptrace it) and
    stays pristine: it never runs code or sees a run's data, and every run is
    a new process, so nothing of one run is left in the next one's.

    The next run's process is forked ahead (``prefork``, after the previous
    run's answer and reset) and waits, as the code user, for its run; a reset
    or kill that ends it is noticed and it is forked again.
    """

    def __init__(self, argv: list[str], env: dict[str, str], user: CodeUser) -> None:
        self.env = env
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.replies = self.sock.makefile("rb")
        self.next: tuple[int, int, int, int, int, int] | None = None  # pid, stdin, stdout, stderr, pidfd, ctl
        try:
            pid = fork()
        except OpError:
            self.sock.close()
            theirs.close()
            raise
        if pid == 0:  # child: stdin/stdout on /dev/null, stderr shared with the launcher
            try:
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                close_fds_except({theirs.fileno()})
                os.set_inheritable(theirs.fileno(), True)
                default_signals()
                os.chdir("/")
                os.execvpe(
                    argv[0],
                    [*argv, FORKSERVER_PROGRAM, str(theirs.fileno()), str(user.uid), str(user.gid)],
                    env,
                )
            finally:
                os._exit(127)
        theirs.close()
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)

    def alive(self) -> bool:
        return not readable(self.pidfd)

    def serves(self, env: dict[str, str]) -> bool:
        return self.alive() and startup_env(env) == startup_env(self.env)

    def prefork(self) -> None:
        """Have the next run's process forked and waiting (a no-op when it is)."""
        if self.next is not None:
            if not readable(self.next[4]):
                return
            self._discard()  # a reset or kill ended it
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        try:
            socket.send_fds(self.sock, [b"F"], [in_r, out_w, err_w, ctl_r])
            line = self.replies.readline()
        except OSError:
            line = b""
        finally:
            for fd in (in_r, out_w, err_w, ctl_r):
                os.close(fd)
        if not line or line == b"E\n":
            for fd in (in_w, out_r, err_r, ctl_w):
                os.close(fd)
            if line:
                raise OpError("pids_exhausted", "the sandbox's process limit (pidsLimit) is reached")
            raise OpError("spawn_failed", "the python fork server stopped")
        pid = int(line)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            # Already gone: a descriptor that reads as "exited" at once.
            pidfd, done = os.pipe()
            os.close(done)
        self.next = (pid, in_w, out_r, err_r, pidfd, ctl_w)

    def launch(self, argv: list[str], env: dict[str, str], cwd: str, files: list[tuple[str, bytes]]) -> Process:
        """Hand the waiting process its run; it writes ``files`` itself (it is the code user).

        Returns the Process like ``spawn``; the wait status comes from
        ``wait()``, the server being the run's parent.
        """
        self.prefork()
        assert self.next is not None
        pid, in_w, out_r, err_r, pidfd, ctl_w = self.next
        self.next = None
        # marshal, not json: the run then needs no import (json pulls in re, ~5 ms).
        data = marshal.dumps({"argv": argv, "env": env, "cwd": cwd, "files": files})
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(ctl_w, view) :]
        except BrokenPipeError:
            pass  # it died first; wait() reports how
        finally:
            os.close(ctl_w)
        return Process(pid, in_w, out_r, err_r, pidfd)

    def wait(self) -> int:
        """The wait status of the launched run (once its pidfd said it ended)."""
        line = self.replies.readline()
        return int(line) if line else signal.SIGKILL  # the server died: report a kill

    def _discard(self) -> None:
        """End the waiting process (it sees EOF) and take its status off the line."""
        assert self.next is not None
        _, in_w, out_r, err_r, pidfd, ctl_w = self.next
        self.next = None
        for fd in (ctl_w, in_w, out_r, err_r, pidfd):
            os.close(fd)
        self.wait()

    def dismiss(self) -> None:
        """Let the server exit (it sees EOF) and reap it."""
        if self.next is not None:
            for fd in self.next[1:]:
                os.close(fd)
            self.next = None
        self.replies.close()
        self.sock.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        os.close(self.pidfd)
