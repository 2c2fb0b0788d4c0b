"""Processes: the code user's identity, starting its programs, killing all of them.

The code user of a sandbox is a uid of its own on the host (``serve --uid``);
in once mode, the uid the launcher was exec'd as. Nothing here ever creates a
process except ``spawn`` (and the fork server in forkclient, and the egress
relay in relay.py, once at start-up): a sandbox whose process slots are all
taken must still be killable and resettable.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import struct
import termios
import time
from collections.abc import Callable
from typing import Any, NamedTuple, NoReturn, Protocol

from isol8_launcher.protocol import OpError

LIBC = ctypes.CDLL(None, use_errno=True)
PR_CAPBSET_DROP = 24
IPC_RMID = 0


class Process(NamedTuple):
    """A started program: its pid, our ends of its three pipes, and a pidfd that reads ready once it ended."""

    pid: int
    stdin: int
    stdout: int
    stderr: int
    pidfd: int


class Spawn(Protocol):
    """spawn(argv, env, cwd, prepare, tty): start a program as the code user (CodeUser.spawn)."""

    def __call__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        prepare: Callable[[], None] | None,
        tty: tuple[int, int] | None = None,
    ) -> Process: ...


def set_terminal_size(fd: int, cols: int, rows: int) -> None:
    """The size of the terminal ``fd`` is a side of; its foreground group gets SIGWINCH."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def drop_capability_bounding_set() -> None:
    """Empty the capability bounding set (needs CAP_SETPCAP), before a child becomes the code user.

    With an empty bounding set and NoNewPrivs, nothing the child executes can
    ever gain a capability again, whatever file it runs.
    """
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            last = int(fh.read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        if LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            raise OSError(ctypes.get_errno(), "cannot drop the capability bounding set")


class ActingAsCodeUser:
    """Within the block, this process has the code user's effective uid and gid.

    File access is then checked by the kernel as the code user's, and signals
    reach exactly the code user's processes, without creating a process (a
    sandbox whose process slots are all taken cannot fork). Only the effective
    ids change: real and saved ids stay root, so the code user can never
    signal this process (the kernel compares a sender's ids with the target's
    real and saved ids), and leaving the block returns to root. In ``once``
    mode the launcher already is the code user and nothing changes.
    """

    def __init__(self, user: CodeUser) -> None:
        self.user = user
        self.switched = False

    def __enter__(self) -> None:
        self.switched = not self.user.is_current()
        if self.switched:
            os.setresgid(-1, self.user.gid, -1)
            os.setresuid(-1, self.user.uid, -1)

    def __exit__(self, *exc: object) -> None:
        if self.switched:
            os.setresuid(-1, 0, -1)
            os.setresgid(-1, 0, -1)


class CodeUser:
    """The uid and gid every program of this sandbox runs as, and what the launcher does to them."""

    def __init__(self, uid: int, gid: int) -> None:
        self.uid = uid
        self.gid = gid

    @classmethod
    def from_args(cls, args: list[str]) -> CodeUser:
        """``--uid N`` names the code user (gid N too); without it, the uid this process runs as."""
        if "--uid" in args:
            uid = int(args[args.index("--uid") + 1])
            return cls(uid, uid)
        return cls(os.getuid(), os.getgid())

    def is_current(self) -> bool:
        """True when this process runs as the code user (once mode)."""
        return os.getuid() == self.uid

    def become(self) -> None:
        """In a child about to run code: no capabilities left, then the code user for good."""
        if os.getuid() == 0:
            drop_capability_bounding_set()
        os.setgroups([])
        os.setgid(self.gid)
        os.setuid(self.uid)
        os.umask(0o022)

    def acting(self) -> ActingAsCodeUser:
        """``with user.acting():`` the block runs with the code user's effective ids."""
        return ActingAsCodeUser(self)

    def run_as(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` acting as the code user; any failure other than OpError becomes one."""
        try:
            with self.acting():
                return fn()
        except OpError:
            raise
        except OSError as exc:
            raise OpError("internal", f"{exc.strerror or exc}") from None
        except Exception as exc:  # noqa: BLE001 - the launcher must answer, not die
            raise OpError("internal", f"{type(exc).__name__}: {exc}") from None

    def processes(self) -> list[tuple[int, str]]:
        """(pid, state) of every process of the code user, other than this one.

        /proc/<pid>/status is read rather than the directory's owner, because a
        process that made itself non-dumpable shows a root-owned directory.
        """
        me = os.getpid()
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open(f"/proc/{name}/status") as fh:
                    status = fh.read()
            except OSError:
                continue
            uid, state = _uid_and_state(status)
            if uid == str(self.uid):
                found.append((int(name), state))
        return found

    def any_alive(self) -> bool:
        """True while a process of the code user other than this one is alive (zombies are dead)."""
        return any(state not in ("Z", "X") for _, state in self.processes())

    def kill_all(self) -> bool:
        """SIGKILL every process of the code user; True when none is left. Never forks.

        In serve mode the processes are first stopped, pass after pass, until none
        is running: a stopped process cannot fork, so a fork bomb cannot refill
        the process slots that the kills free. Then all of them are killed. No
        process of this launcher is created, so this works with every slot of the
        pids cgroup taken. No process but the code user's can be signalled here:
        nothing else that could reuse a pid forks while this runs.
        """
        if self.is_current():
            return self.sweep()
        with self.acting():
            for _ in range(50):
                running = [pid for pid, state in self.processes() if state not in ("T", "t", "Z", "X")]
                if not running:
                    break
                _signal_all(running, signal.SIGSTOP)
            for _ in range(200):
                alive = [pid for pid, state in self.processes() if state not in ("Z", "X")]
                if not alive:
                    return True
                _signal_all(alive, signal.SIGKILL)
                time.sleep(0.002)
        return not self.any_alive()

    def sweep(self) -> bool:
        """As the code user itself (once mode): SIGKILL all its other processes until none is alive.

        ``kill(-1)`` from the code uid reaches exactly the code user's processes
        and the kernel aborts a fork() whose parent has a fatal signal pending, so
        a fork bomb cannot outrun it; it is repeated until /proc shows nothing alive.
        """
        for _ in range(200):
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                return True
            if not self.any_alive():
                return True
            time.sleep(0.005)
        return False

    def spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        prepare: Callable[[], None] | None,
        tty: tuple[int, int] | None = None,
        *,
        pass_fds: dict[int, int] | None = None,
    ) -> Process:
        """Start ``argv`` as the code user in its own session.

        ``prepare`` runs in the child after it became the code user and before the
        exec (it writes the run's files: one fork fewer than a separate helper).
        With ``tty`` (cols, rows) the program's stdin, stdout and stderr are a
        new pseudo-terminal of this sandbox, its controlling terminal; the
        Process then holds the terminal's master side as stdin and stdout (and
        a stderr pipe that only ends). Raises OpError when the program cannot
        be started (bad cwd, missing binary, a file that cannot be written).
        ``pass_fds`` maps descriptors of the program (3 and up) to ours that it
        gets there (a stateful session's interpreter: its cell and event pipes).
        """
        if tty is not None:
            with self.acting():  # devpts gives the new terminal to the opener: the code user
                master, slave = os.openpty()
            set_terminal_size(master, *tty)
            in_r, in_w, out_r, out_w = slave, os.dup(master), master, os.dup(slave)
        else:
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = fork()
        except OpError:
            for fd in (in_r, in_w, out_r, out_w, err_r, err_w, status_r, status_w):
                os.close(fd)
            raise
        if pid == 0:  # child
            try:
                os.close(status_r)
                os.setsid()
                if not self.is_current():
                    self.become()
                os.dup2(in_r, 0)
                os.dup2(out_w, 1)
                os.dup2(out_w if tty is not None else err_w, 2)
                if tty is not None:
                    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
                status_w = _place_fds(status_w, pass_fds or {})
                close_fds_except({status_w, *(pass_fds or {})})
                default_signals()
                if prepare is not None:
                    prepare()
                os.chdir(cwd)
                os.execvpe(argv[0], argv, env)
            except BaseException as exc:  # noqa: BLE001 - reported through the status pipe
                _report_spawn_failure(status_w, argv, exc)
        for fd in (in_r, out_w, err_w, status_w):
            os.close(fd)
        failure = b""
        while chunk := os.read(status_r, 4096):  # EOF when exec succeeded (close-on-exec)
            failure += chunk
        os.close(status_r)
        if failure:
            os.waitpid(pid, 0)
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            code, message = json.loads(failure)
            raise OpError(code, message)
        pidfd = os.pidfd_open(pid)
        return Process(pid, in_w, out_r, err_r, pidfd)


def _place_fds(status_w: int, pass_fds: dict[int, int]) -> int:
    """In spawn's child: put each passed descriptor at its number; returns where status_w is now.

    Everything is first moved above every wanted number, so that no dup2 can
    overwrite a descriptor still to be placed (the status pipe among them).
    """
    if not pass_fds:
        return status_w
    floor = max(pass_fds) + 1
    status_w = fcntl.fcntl(status_w, fcntl.F_DUPFD_CLOEXEC, floor)
    moved = {target: fcntl.fcntl(source, fcntl.F_DUPFD, floor) for target, source in pass_fds.items()}
    for target, source in moved.items():
        os.dup2(source, target)  # dup2's copy is inheritable: the program keeps it
    return status_w


def _uid_and_state(status: str) -> tuple[str, str]:
    """The real uid and the state letter in the text of a /proc/<pid>/status."""
    uid = state = ""
    for line in status.splitlines():
        if line.startswith("State:"):
            state = line.split()[1]
        elif line.startswith("Uid:"):
            uid = line.split()[1]
            break
    return uid, state


def _report_spawn_failure(status_w: int, argv: list[str], exc: BaseException) -> NoReturn:
    """In spawn's child: say why the program could not start, then exit 127."""
    if isinstance(exc, OpError):
        reason = [exc.code, exc.message[:2000]]
    elif isinstance(exc, OSError):
        reason = ["spawn_failed", f"{argv[0]}: {exc.strerror}"]
    else:
        reason = ["spawn_failed", f"{argv[0]}: {exc}"[:2000]]
    try:
        # Small enough for one atomic pipe write (PIPE_BUF is 4096).
        os.write(status_w, json.dumps(reason).encode()[:4000])
    finally:
        os._exit(127)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def fork() -> int:
    """os.fork(), with a full pids cgroup reported as the sandbox's process limit."""
    try:
        return os.fork()
    except BlockingIOError:
        raise OpError(
            "pids_exhausted", "the sandbox's process limit (pidsLimit) is reached: no process can be started"
        ) from None


def close_fds_except(keep: set[int]) -> None:
    """Close every descriptor from 3 up, except those in ``keep``."""
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


def default_signals() -> None:
    """Before an exec: the signal dispositions a freshly started program expects."""
    for sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)


def remove_sysv_ipc() -> None:
    """Remove System V shared memory, queues and semaphores the code user left (no ipcrm process)."""
    removers = (("shm", LIBC.shmctl, 3), ("msg", LIBC.msgctl, 3), ("sem", LIBC.semctl, 4))
    for kind, remove, arity in removers:
        try:
            with open(f"/proc/sysvipc/{kind}") as fh:
                lines = fh.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 1:
                # shmctl(id, IPC_RMID, NULL), msgctl(id, IPC_RMID, NULL), semctl(id, 0, IPC_RMID)
                args = (int(fields[1]), IPC_RMID, None) if arity == 3 else (int(fields[1]), 0, IPC_RMID, None)
                remove(*args)


# ------------------------------------------------------------------ cgroup facts


def cgroup_counter(candidates: tuple[tuple[str, str], ...]) -> int:
    """Read a ``key value`` counter from the first cgroup file that exists."""
    for path, key in candidates:
        try:
            with open(path) as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == key:
                        return int(parts[1])
        except OSError:
            continue
    return 0


OOM_FILES = (
    ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),  # cgroup v1
    ("/sys/fs/cgroup/memory.events", "oom_kill"),  # cgroup v2
)
PIDS_FILES = (
    ("/sys/fs/cgroup/pids/pids.events", "max"),
    ("/sys/fs/cgroup/pids.events", "max"),
)
CPU_USAGE_FILES = (
    ("/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage", 1),  # cgroup v1: nanoseconds
    ("/sys/fs/cgroup/cpuacct/cpuacct.usage", 1),
)


def cgroup_value(candidates: tuple[tuple[str, int], ...]) -> int:
    """A single-number cgroup file (scaled), or cgroup v2's cpu.stat usage_usec in ns."""
    for path, scale in candidates:
        try:
            with open(path) as fh:
                return int(fh.read().strip()) * scale
        except (OSError, ValueError):
            continue
    return cgroup_counter((("/sys/fs/cgroup/cpu.stat", "usage_usec"),)) * 1000
