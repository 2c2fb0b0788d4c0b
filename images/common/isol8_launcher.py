#!/usr/bin/python3 -I
"""The isol8 in-container launcher.

This file is copied into every sandbox image as /opt/isol8/isol8_launcher.py and
only uses the standard library of the image's Python 3.

It speaks one small framed protocol with the worker, in two modes:

``serve``  The container's main process (under docker-init). It runs as root with
           exactly two capabilities, SETUID and SETGID, so that it can start the
           user's program as the unprivileged code user. It reads requests from
           its stdin (the container's attached stdin) and writes replies to its
           stdout, forever. This avoids one ``docker exec`` per run.
``once``   The ``docker exec`` fallback. It is exec'd as the code user itself,
           handles exactly one request from stdin and exits.

Requests are a 4-byte big-endian length followed by a JSON object.
Replies are frames: a 4-byte big-endian payload length, one kind byte, the payload.

    o / e   a chunk of the program's stdout / stderr     (raw bytes)
    O / E   a chunk of the setup script's stdout / stderr (raw bytes)
    t       a stream just passed maxOutput                (JSON: kind, bytes)
    x       the end of a run                              (JSON)
    r       the reply to any other operation              (JSON)
    c       the acknowledgement of a cancel that arrived after its run

The code user can neither write to the launcher's stdout (it only ever holds its
own pipes, and the launcher's /proc entries belong to root) nor read the
launcher's memory or environment (different uid; ptrace and process_vm_* are
refused by the seccomp profile).
"""

from __future__ import annotations

import base64
import ctypes
import errno
import io
import json
import marshal
import os
import posixpath
import select
import selectors
import signal
import socket
import stat
import struct
import sys
import tarfile
import time
from typing import Any, Callable

# The code user of this sandbox: a uid of its own on the host (``serve --uid``);
# in once mode, the uid the launcher was exec'd as.
CODE_UID = 1000
CODE_GID = 1000
LIBC = ctypes.CDLL(None, use_errno=True)
PR_CAPBSET_DROP = 24
SANDBOX = "/sandbox"
# Places the code user can write to. A reset empties all of them, so nothing of
# one run is visible to the next one.
SCRATCH_DIRS = ("/sandbox", "/tmp", "/dev/shm", "/dev/mqueue")
# Where a run's files and outputPaths may be; the file API only reaches /sandbox.
RUN_FILE_ROOTS = ("/sandbox", "/tmp")
REQUEST_HEADER = struct.Struct(">I")
FRAME_HEADER = struct.Struct(">IB")
MAX_REQUEST_BYTES = 64 * 1024 * 1024
READ_CHUNK = 65536
# Output is forwarded at once when the stream has been quiet for this long;
# otherwise chunks are held back and merged, so a program printing 100 000 short
# lines produces a few hundred frames, not 100 000.
COALESCE_SECONDS = 0.004
COALESCE_BYTES = 32 * 1024
MAX_SYMLINKS = 40
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/sandbox",
    "USER": "sandbox",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
}


class OpError(Exception):
    """A refused operation; ``code`` is the API error code the worker maps it to."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- I/O


def read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_request(fd: int) -> dict[str, Any] | None:
    header = read_exact(fd, REQUEST_HEADER.size)
    if header is None:
        return None
    (length,) = REQUEST_HEADER.unpack(header)
    if length > MAX_REQUEST_BYTES:
        raise OpError("payload_too_large", "request too large")
    body = read_exact(fd, length)
    if body is None:
        return None
    request = json.loads(body)
    if not isinstance(request, dict):
        raise OpError("bad_request", "request must be an object")
    return request


def send(kind: bytes, payload: bytes) -> None:
    data = FRAME_HEADER.pack(len(payload), kind[0]) + payload
    view = memoryview(data)
    while view:
        written = os.write(1, view)
        view = view[written:]


def send_json(kind: bytes, obj: dict[str, Any]) -> None:
    send(kind, json.dumps(obj).encode())


# ------------------------------------------------------------ acting as the user


def running_as_code_user() -> bool:
    return os.getuid() == CODE_UID


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


def become_code_user() -> None:
    """In a child about to run code: no capabilities left, then the code user for good."""
    if os.getuid() == 0:
        drop_capability_bounding_set()
    os.setgroups([])
    os.setgid(CODE_GID)
    os.setuid(CODE_UID)
    os.umask(0o022)


class acting_as_code_user:  # noqa: N801 - used like a function: `with acting_as_code_user():`
    """Within the block, this process has the code user's effective uid and gid.

    File access is then checked by the kernel as the code user's, and signals
    reach exactly the code user's processes, without creating a process (a
    sandbox whose process slots are all taken cannot fork). Only the effective
    ids change: real and saved ids stay root, so the code user can never
    signal this process (the kernel compares a sender's ids with the target's
    real and saved ids), and leaving the block returns to root. In ``once``
    mode the launcher already is the code user and nothing changes.
    """

    def __enter__(self) -> None:
        self.switched = not running_as_code_user()
        if self.switched:
            os.setresgid(-1, CODE_GID, -1)
            os.setresuid(-1, CODE_UID, -1)

    def __exit__(self, *exc: object) -> None:
        if self.switched:
            os.setresuid(-1, 0, -1)
            os.setresgid(-1, 0, -1)


def as_code_user(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` acting as the code user; any failure other than OpError becomes one."""
    try:
        with acting_as_code_user():
            return fn()
    except OpError:
        raise
    except OSError as exc:
        raise OpError("internal", f"{exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - the launcher must answer, not die
        raise OpError("internal", f"{type(exc).__name__}: {exc}") from None


def code_processes() -> list[tuple[int, str]]:
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
        uid = state = ""
        for line in status.splitlines():
            if line.startswith("State:"):
                state = line.split()[1]
            elif line.startswith("Uid:"):
                uid = line.split()[1]
                break
        if uid == str(CODE_UID):
            found.append((int(name), state))
    return found


def live_code_processes() -> bool:
    """True while a process of the code user other than this one is alive (zombies are dead)."""
    return any(state not in ("Z", "X") for _, state in code_processes())


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_code_user() -> bool:
    """SIGKILL every process of the code user; True when none is left. Never forks.

    In serve mode the processes are first stopped, pass after pass, until none
    is running: a stopped process cannot fork, so a fork bomb cannot refill
    the process slots that the kills free. Then all of them are killed. No
    process of this launcher is created, so this works with every slot of the
    pids cgroup taken. No process but the code user's can be signalled here:
    nothing else that could reuse a pid forks while this runs.
    """
    if running_as_code_user():
        return sweep_code_user()
    with acting_as_code_user():
        for _ in range(50):
            running = [pid for pid, state in code_processes() if state not in ("T", "t", "Z", "X")]
            if not running:
                break
            _signal_all(running, signal.SIGSTOP)
        for _ in range(200):
            alive = [pid for pid, state in code_processes() if state not in ("Z", "X")]
            if not alive:
                return True
            _signal_all(alive, signal.SIGKILL)
            time.sleep(0.002)
    return not live_code_processes()


def sweep_code_user() -> bool:
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
        if not live_code_processes():
            return True
        time.sleep(0.005)
    return False


def fork() -> int:
    """os.fork(), with a full pids cgroup reported as the sandbox's process limit."""
    try:
        return os.fork()
    except BlockingIOError:
        raise OpError(
            "pids_exhausted", "the sandbox's process limit (pidsLimit) is reached: no process can be started"
        ) from None


# ------------------------------------------------------------------- file paths


def scratch_root(path: str, roots: tuple[str, ...] = (SANDBOX,)) -> str:
    """The scratch directory (/sandbox, or /tmp where allowed) that ``path`` is beneath."""
    full = path if path.startswith("/") else posixpath.join(SANDBOX, path)
    norm = posixpath.normpath(full)
    for root in roots:
        if norm == root or norm.startswith(root + "/"):
            return root
    raise OpError("path_outside_sandbox", f"path is outside {' or '.join(roots)}: {path}")


def beneath_parts(path: str, root: str) -> list[str]:
    """Split a user path into components beneath ``root``, refusing escapes."""
    if "\x00" in path:
        raise OpError("path_outside_sandbox", "path contains a NUL byte")
    full = path if path.startswith("/") else posixpath.join(SANDBOX, path)
    norm = posixpath.normpath(full)
    if norm != root and not norm.startswith(root + "/"):
        raise OpError("path_outside_sandbox", f"path is outside {root}: {path}")
    return [p for p in norm[len(root) :].split("/") if p]


def open_beneath(
    parts: list[str], *, root: str = SANDBOX, create_dirs: bool = False, follow: bool = True
) -> tuple[int, str]:
    """Open the parent directory of ``parts`` beneath ``root``.

    Every component is opened with O_NOFOLLOW relative to the previous one.
    With ``follow``, symlinks are resolved by hand and only while they stay
    beneath ``root``; one that leads anywhere else is refused. Without it, any
    symlink on the way is refused. Returns (dir_fd, last name).
    """
    if not parts:
        raise OpError("path_outside_sandbox", f"path names {root} itself")
    pending = list(parts)
    stack: list[int] = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
    links = 0
    try:
        while len(pending) > 1:
            name = pending.pop(0)
            if name == "..":
                if len(stack) == 1:
                    raise OpError("path_outside_sandbox", f"path leads outside {root}")
                os.close(stack.pop())
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=stack[-1])
            except FileNotFoundError:
                if not create_dirs:
                    raise OpError("not_found", "no such file") from None
                os.mkdir(name, 0o755, dir_fd=stack[-1])
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=stack[-1])
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(name, dir_fd=stack[-1], follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise OpError("not_found", "a path component is not a directory") from None
                links += 1
                if not follow:
                    raise OpError("path_outside_sandbox", "the path goes through a symlink") from None
                if links > MAX_SYMLINKS:
                    raise OpError("path_outside_sandbox", "too many symlinks") from None
                target = os.readlink(name, dir_fd=stack[-1])
                if target.startswith("/"):
                    # Restart from the root with the absolute target.
                    new_parts = beneath_parts(target, root)
                    for extra in stack[1:]:
                        os.close(extra)
                    del stack[1:]
                    pending = new_parts + pending
                else:
                    pending = [p for p in target.split("/") if p and p != "."] + pending
                continue
            stack.append(fd)
        last = pending[0]
        if last == "..":
            raise OpError("path_outside_sandbox", f"path leads outside {root}")
        return stack.pop(), last
    finally:
        for fd in stack:
            os.close(fd)


def resolve_final(dir_fd: int, name: str, root: str = SANDBOX) -> tuple[int, str]:
    """Follow a final-component symlink while it stays beneath ``root``."""
    for _ in range(MAX_SYMLINKS):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return dir_fd, name
        if not stat.S_ISLNK(st.st_mode):
            return dir_fd, name
        target = os.readlink(name, dir_fd=dir_fd)
        if target.startswith("/"):
            parts = beneath_parts(target, root)
        else:
            # A relative target is resolved against the directory that holds it.
            here = os.readlink(f"/proc/self/fd/{dir_fd}")
            parts = beneath_parts(posixpath.join(here, target), root)
        os.close(dir_fd)
        dir_fd, name = open_beneath(parts, root=root)
    os.close(dir_fd)
    raise OpError("path_outside_sandbox", "too many symlinks")


def open_user_file(path: str, *, roots: tuple[str, ...] = (SANDBOX,), follow: bool = True) -> int:
    """Open an existing regular file beneath one of ``roots`` for reading; never blocks."""
    root = scratch_root(path, roots)
    dir_fd, name = open_beneath(beneath_parts(path, root), root=root, follow=follow)
    if follow:
        dir_fd, name = resolve_final(dir_fd, name, root)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        raise OpError("not_found", f"file not found: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OpError("path_outside_sandbox", f"{path} is a symlink") from None
        raise
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OpError("not_found", f"not a regular file: {path}")
    return fd


def read_fd(fd: int, max_bytes: int, path: str) -> bytes:
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise OpError("payload_too_large", f"file is {size} bytes, limit {max_bytes}")
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise OpError("payload_too_large", f"{path} is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_user_file(path: str, max_bytes: int) -> bytes:
    """A file beneath /sandbox (symlinks followed while they stay beneath it)."""
    return read_fd(open_user_file(path), max_bytes, path)


def write_user_file(path: str, content: bytes, mode: int = 0o644, roots: tuple[str, ...] = (SANDBOX,)) -> None:
    """Create or replace a regular file beneath one of ``roots``; anything else there is refused.

    Opened with O_NONBLOCK (a FIFO without a reader fails at once instead of
    blocking this process) and checked to be a regular file before a byte is
    written.
    """
    root = scratch_root(path, roots)
    dir_fd, name = resolve_final(*open_beneath(beneath_parts(path, root), root=root, create_dirs=True), root)
    try:
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=dir_fd
        )
    except IsADirectoryError:
        raise OpError("validation_error", f"path is a directory: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OpError("path_outside_sandbox", f"symlink leads outside {root}") from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads
            raise OpError("validation_error", f"not a regular file: {path}") from None
        raise
    finally:
        os.close(dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OpError("validation_error", f"not a regular file: {path}")
        os.ftruncate(fd, 0)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OpError("sandbox_full", f"no space left in {root}") from None
        raise
    finally:
        os.close(fd)


def write_files(files: list[list[str]]) -> None:
    for path, b64 in files:
        try:
            write_user_file(path, base64.b64decode(b64), roots=RUN_FILE_ROOTS)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OpError("sandbox_full", "no space left in the sandbox") from None
            raise OpError("validation_error", f"cannot write {path}: {exc.strerror}") from None


def read_output_files(paths: list[str], max_file: int, max_total: int) -> dict[str, str]:
    """A run's outputPaths: regular files only, no symlink anywhere on the way, each file once.

    Missing or refused paths are omitted, as isol8 does; so are files past
    ``max_total`` bytes in all (a file listed twice, or hard-linked under
    two names, is returned once and counted once).
    """
    found: dict[str, str] = {}
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in paths:
        try:
            fd = open_user_file(path, roots=RUN_FILE_ROOTS, follow=False)
        except (OpError, OSError):
            continue
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) in seen or total + st.st_size > max_total:
            os.close(fd)
            continue
        try:
            data = read_fd(fd, min(max_file, max_total - total), path)
        except (OpError, OSError):
            continue
        seen.add((st.st_dev, st.st_ino))
        total += len(data)
        found[path] = base64.b64encode(data).decode()
    return found


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


# ------------------------------------------------------------------------ a run


class OutputPump:
    """Reads a program's stdout and stderr and forwards them as frames.

    Chunks of one stream are merged while output keeps coming faster than
    COALESCE_SECONDS; a chunk of the other stream flushes what is pending first,
    so frames keep the order in which the two pipes were read.
    """

    def __init__(self, kinds: tuple[bytes, bytes], max_output: int) -> None:
        self.kinds = kinds
        self.max_output = max_output
        self.totals = [0, 0]
        self.pending_stream = -1
        self.pending = bytearray()
        self.last_flush = 0.0

    def feed(self, stream: int, data: bytes) -> None:
        before = self.totals[stream]
        self.totals[stream] += len(data)
        if before >= self.max_output:
            return  # past the limit: counted, not forwarded
        data = data[: self.max_output - before]
        if self.pending and self.pending_stream != stream:
            self.flush()
        self.pending_stream = stream
        self.pending += data
        now = time.monotonic()
        if self.totals[stream] > self.max_output:
            # Crossed the limit just now: say so once, right after the last bytes.
            self.flush(now)
            send_json(b"t", {"kind": self.kinds[stream].decode(), "bytes": self.totals[stream]})
        elif now - self.last_flush >= COALESCE_SECONDS or len(self.pending) >= COALESCE_BYTES:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self.pending:
            send(self.kinds[self.pending_stream], bytes(self.pending))
            self.pending.clear()
        self.last_flush = time.monotonic() if now is None else now

    def wait_hint(self) -> float | None:
        if not self.pending:
            return None
        return max(0.0, self.last_flush + COALESCE_SECONDS - time.monotonic())


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


def spawn(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    prepare: Callable[[], None] | None,
) -> tuple[int, int, int, int, int]:
    """Start ``argv`` as the code user in its own session.

    ``prepare`` runs in the child after it became the code user and before the
    exec (it writes the run's files: one fork fewer than a separate helper).
    Returns (pid, stdin_w, stdout_r, stderr_r, pidfd). Raises OpError when the
    program cannot be started (bad cwd, missing binary, a file that cannot be
    written).
    """
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
            if not running_as_code_user():
                become_code_user()
            os.dup2(in_r, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            close_fds_except({status_w})
            default_signals()
            if prepare is not None:
                prepare()
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        except BaseException as exc:  # noqa: BLE001 - reported through the status pipe
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
    return pid, in_w, out_r, err_r, pidfd


# The program of a python fork server. It starts like `python3` (as root, with
# the launcher's two capabilities) and never runs user code itself: on request
# it receives four descriptors (stdin, stdout, stderr, control) and forks. The
# child drops to the code user, forgets the modules a fresh interpreter would
# not have, and waits on its control pipe for its run; then it runs the script
# as `python3 script` would: __main__, sys.argv, sys.path[0], the user site
# directory, exit status, and tracebacks without our frames. The server writes
# the child's pid, and its wait status once it ended, to the launcher.
# A run's data (code, env, files) only ever reaches its own process, so no run
# can find another's in the memory it inherits.
FORKSERVER_SOURCE = r"""
import sys
_isol8_fresh = set(sys.modules)
import os, _socket, ctypes
def _isol8_serve(fd, uid, gid):
    server = _socket.socket(fileno=fd)
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    with open("/proc/sys/kernel/cap_last_cap") as fh:
        last_cap = int(fh.read())
    while True:
        try:
            _, ancdata, _, _ = server.recvmsg(1, _socket.CMSG_SPACE(4 * 4))
        except OSError:
            os._exit(0)
        fds = []
        for level, kind, data in ancdata:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds += [int.from_bytes(data[i:i + 4], sys.byteorder) for i in range(0, len(data) - 3, 4)]
        if len(fds) != 4:
            os._exit(0)  # EOF, or not a request of the launcher
        try:
            pid = os.fork()
        except OSError:  # no process slot left (pidsLimit): say so and keep serving
            for fd in fds:
                os.close(fd)
            server.sendall(b"E\n")
            continue
        if pid == 0:
            try:
                server.close()
                os.setsid()
                for cap in range(last_cap + 1):
                    prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP: nothing can regain a capability
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                os.umask(0o022)
                for target, fd in enumerate(fds[:3]):
                    os.dup2(fd, target)
                ctl = fds[3]
                os.closerange(3, ctl)
                os.closerange(ctl + 1, 65536)
                return ctl, prctl
            except BaseException as exc:
                os.write(fds[2], f"isol8: cannot start the run: {exc}\n".encode())
                os._exit(127)
        for fd in fds:
            os.close(fd)
        server.sendall(b"%d\n" % pid)
        _, status = os.waitpid(pid, 0)
        server.sendall(b"%d\n" % status)
_isol8_ctl, _isol8_prctl = _isol8_serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
del _isol8_serve
def _isol8_forget(fresh):
    for name in [m for m in sys.modules if m not in fresh]:
        del sys.modules[name]
_isol8_forget(_isol8_fresh)
del _isol8_forget, _isol8_fresh, os, _socket, ctypes
import os, marshal
from _frozen_importlib_external import SourceFileLoader
def _isol8_wait(fd):
    data = bytearray()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    if not data:
        os._exit(0)
    # Changing uid made this process non-dumpable (out of reach of other code
    # user processes while it waited); `python3` run as uid 1000 is dumpable.
    _isol8_prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    req = marshal.loads(bytes(data))
    for path, content in req["files"]:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(content)
    os.makedirs(req["cwd"], exist_ok=True)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    sys.argv[:] = req["argv"][1:]
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
    import site
    if site.ENABLE_USER_SITE:
        user_site = site.getusersitepackages()
        if os.path.isdir(user_site) and user_site not in sys.path:
            site.addsitedir(user_site)
    return sys.argv[0]
def _isol8_exit(code):
    # What interpreter shutdown does that a program can observe: wait for its
    # threads, run its atexit handlers, flush its output. The rest (tearing
    # down modules) is skipped: it costs ~5 ms and nothing can see it.
    if "threading" in sys.modules:
        sys.modules["threading"]._shutdown()
    import atexit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)
def _isol8_run(path):
    # What `python3 path` sets up for __main__ (runpy.run_path would first
    # import pkgutil and probe for zip files: ~12 ms for nothing).
    with open(path, "rb") as fh:
        source = fh.read()
    code = compile(source, path, "exec", dont_inherit=True)
    main = type(sys)("__main__")
    main.__file__ = path
    main.__cached__ = None
    main.__loader__ = SourceFileLoader("__main__", path)
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    exec(code, main.__dict__)
_isol8_script = _isol8_wait(_isol8_ctl)
del _isol8_wait, _isol8_ctl, _isol8_prctl
try:
    _isol8_run(_isol8_script)
except SystemExit as _isol8_stop:
    _isol8_code = _isol8_stop.code
    if _isol8_code is None:
        _isol8_exit(0)
    if isinstance(_isol8_code, int):
        _isol8_exit(_isol8_code & 0xFF)
    print(_isol8_code, file=sys.stderr)
    _isol8_exit(1)
except BaseException as _isol8_exc:
    _isol8_tb = _isol8_exc.__traceback__
    while _isol8_tb is not None and _isol8_tb.tb_frame.f_code.co_filename != _isol8_script:
        _isol8_tb = _isol8_tb.tb_next
    _isol8_exc.__traceback__ = _isol8_tb
    sys.excepthook(type(_isol8_exc), _isol8_exc, _isol8_tb)
    _isol8_exit(1)
_isol8_exit(0)
"""
# Variables read when an interpreter starts: the fork server only serves runs
# whose values for these equal the ones it was started with.
STARTUP_ENV_PREFIXES = ("PYTHON", "LC_", "LANG", "TZ", "HOME", "PATH")


def startup_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(STARTUP_ENV_PREFIXES)}


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

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
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
                    [*argv, "-c", FORKSERVER_SOURCE, str(theirs.fileno()), str(CODE_UID), str(CODE_GID)],
                    env,
                )
            finally:
                os._exit(127)
        theirs.close()
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)

    def alive(self) -> bool:
        return not _readable(self.pidfd)

    def serves(self, env: dict[str, str]) -> bool:
        return self.alive() and startup_env(env) == startup_env(self.env)

    def prefork(self) -> None:
        """Have the next run's process forked and waiting (a no-op when it is)."""
        if self.next is not None:
            if not _readable(self.next[4]):
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

    def launch(
        self, argv: list[str], env: dict[str, str], cwd: str, files: list[tuple[str, bytes]]
    ) -> tuple[int, int, int, int, int]:
        """Hand the waiting process its run; it writes ``files`` itself (it is the code user).

        Returns (pid, stdin_w, stdout_r, stderr_r, pidfd) like ``spawn``; the
        wait status comes from ``wait()``, the server being the run's parent.
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
        return pid, in_w, out_r, err_r, pidfd

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


def _readable(fd: int) -> bool:
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready)


# Requests that arrived while a run was in progress, served in order after it.
PENDING: list[dict[str, Any]] = []
# Set by the "zygote" operation (python sandboxes in serve mode).
FORKSERVER_CONFIG: dict[str, Any] | None = None
FORKSERVER: ForkServer | None = None


def python_forkserver(env: dict[str, str]) -> ForkServer | None:
    """The fork server if it can serve a run with this environment."""
    if FORKSERVER is not None and FORKSERVER.serves(env):
        return FORKSERVER
    return None


def ensure_forkserver() -> None:
    """Have a live fork server, and the next run's process forked, when python runs use one."""
    global FORKSERVER
    if FORKSERVER_CONFIG is None:
        return
    try:
        if FORKSERVER is None or not FORKSERVER.alive():
            if FORKSERVER is not None:
                FORKSERVER.dismiss()
            FORKSERVER = None
            FORKSERVER = ForkServer(FORKSERVER_CONFIG["argv"], FORKSERVER_CONFIG["env"])
        FORKSERVER.prefork()
    except (OSError, OpError) as exc:
        print(f"isol8 launcher: python fork server failed: {exc}", file=sys.stderr)


def run_program(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str,
    stdin: bytes,
    deadline: float,
    max_output: int,
    kinds: tuple[bytes, bytes],
    kill_leftovers: bool,
    prepare: Callable[[], None] | None = None,
    forkserver: ForkServer | None = None,
    forked_files: list[tuple[str, bytes]] | None = None,
) -> dict[str, Any]:
    """Run one program to completion and stream its output; returns its outcome.

    With a fork server, ``forked_files`` (just the program file) are written
    by the forked run itself; anything more is written by ``prepare`` in a
    helper first.
    """
    started = time.monotonic()
    reap: Callable[[], int]
    if forkserver is not None:
        if forked_files is None and prepare is not None:
            as_code_user(prepare)
        pid, in_w, out_r, err_r, pidfd = forkserver.launch(argv, env, cwd, forked_files or [])
        reap = forkserver.wait
    else:
        pid, in_w, out_r, err_r, pidfd = spawn(argv, env, cwd, prepare)
        reap = lambda: os.waitpid(pid, 0)[1]  # noqa: E731
    pump = OutputPump(kinds, max_output)
    sel = selectors.DefaultSelector()
    os.set_blocking(in_w, False)
    stdin_view = memoryview(stdin)
    if stdin_view:
        sel.register(in_w, selectors.EVENT_WRITE, "in")
    else:
        os.close(in_w)
        in_w = -1
    sel.register(out_r, selectors.EVENT_READ, 0)
    sel.register(err_r, selectors.EVENT_READ, 1)
    sel.register(pidfd, selectors.EVENT_READ, "exit")
    # The worker may send {"op": "cancel"} on our stdin while the program runs.
    sel.register(0, selectors.EVENT_READ, "ctl")
    open_pipes = {out_r, err_r}
    status: int | None = None
    timed_out = False
    cancelled = False
    while status is None:
        now = time.monotonic()
        if now >= deadline:
            timed_out = True
            kill_code_user()
            status = reap()
            break
        hint = pump.wait_hint()
        wait = deadline - now if hint is None else min(hint, deadline - now)
        for key, _ in sel.select(wait):
            tag = key.data
            if tag == "exit":
                status = reap()
            elif tag == "ctl":
                try:
                    ctl = read_request(0)
                except (OpError, ValueError):
                    ctl = None
                if ctl is None:
                    sel.unregister(0)  # the worker closed its side; the deadline still holds
                elif ctl.get("op") == "cancel":
                    if not cancelled:
                        cancelled = True
                        kill_code_user()
                else:
                    PENDING.append(ctl)  # a request sent ahead: served after this run
            elif tag == "in":
                try:
                    stdin_view = stdin_view[os.write(in_w, stdin_view[:READ_CHUNK]) :]
                except BrokenPipeError:
                    stdin_view = stdin_view[:0]
                if not stdin_view:
                    sel.unregister(in_w)
                    os.close(in_w)
                    in_w = -1
            else:
                chunk = os.read(key.fd, READ_CHUNK)
                if chunk:
                    pump.feed(tag, chunk)
                else:
                    sel.unregister(key.fd)
                    open_pipes.discard(key.fd)
        if hint is not None:
            pump.flush()
    duration_ms = int((time.monotonic() - started) * 1000)
    if in_w >= 0:
        os.close(in_w)
    # Collect what the program wrote before it exited. Processes it left in the
    # background may still hold the pipes: in a one-shot sandbox they are killed
    # now so the pipes reach EOF; in a session they live on and later output of
    # theirs is dropped.
    if kill_leftovers and open_pipes:
        kill_code_user()
    drain_until = time.monotonic() + (2.0 if kill_leftovers else 0.0)
    for fd in list(open_pipes):
        os.set_blocking(fd, False)
    while open_pipes:
        for fd in list(open_pipes):
            data: bytes | None
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                data = None
            if data:
                pump.feed(0 if fd == out_r else 1, data)
            elif data == b"":
                open_pipes.discard(fd)
            elif time.monotonic() >= drain_until:
                open_pipes.discard(fd)
        if open_pipes and time.monotonic() < drain_until:
            select.select(list(open_pipes), [], [], 0.05)
    pump.flush()
    for fd in (out_r, err_r, pidfd):
        os.close(fd)
    sel.close()
    if os.WIFSIGNALED(status):
        exit_code = 128 + os.WTERMSIG(status)
    else:
        exit_code = os.WEXITSTATUS(status)
    if timed_out or cancelled:
        exit_code = 137
    return {
        "exitCode": exit_code,
        "timedOut": timed_out,
        "cancelled": cancelled,
        "durationMs": duration_ms,
        "stdoutBytes": pump.totals[0],
        "stderrBytes": pump.totals[1],
        "killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
    }


def op_run(req: dict[str, Any]) -> None:
    """Write files, run the optional setup script, then the program."""
    started = time.monotonic()
    timeout = max(0.001, float(req.get("timeoutMs", 30000)) / 1000.0)
    deadline = started + timeout
    max_output = int(req.get("maxOutput", 1024 * 1024))
    kill_leftovers = bool(req.get("killLeftovers", True))
    env = dict(BASE_ENV)
    env.update(req.get("env") or {})
    cwd = req.get("cwd") or SANDBOX
    oom_before = cgroup_counter(OOM_FILES)
    pids_before = cgroup_counter(PIDS_FILES)
    outcome: dict[str, Any] = {}
    files = req.get("files") or []

    def prepare() -> None:
        write_files(files)
        if cwd != SANDBOX:
            os.makedirs(cwd, exist_ok=True)

    try:
        setup = req.get("setup")
        if setup:
            setup_env = dict(BASE_ENV)
            setup_env.update(req.get("setupEnv") or env)
            outcome = run_program(
                setup,
                env=setup_env,
                cwd=SANDBOX,
                stdin=b"",
                deadline=deadline,
                max_output=max_output,
                kinds=(b"O", b"E"),
                kill_leftovers=kill_leftovers,
                prepare=prepare,
            )
            if outcome["timedOut"] or outcome["cancelled"] or outcome["exitCode"] != 0:
                outcome["phase"] = "setup"
        if not outcome.get("phase"):
            stdin = base64.b64decode(req.get("stdin") or "")
            forkserver = python_forkserver(env) if req.get("zygote") else None
            # The usual run sends just its program file: the forked run writes
            # it (uid 1000 itself), saving a helper fork of this process.
            only_program = len(files) == 1 and files[0][0].startswith(SANDBOX + "/") and not setup
            outcome = run_program(
                req["argv"],
                env=env,
                cwd=cwd,
                stdin=stdin,
                deadline=deadline,
                max_output=max_output,
                kinds=(b"o", b"e"),
                kill_leftovers=kill_leftovers,
                prepare=None if setup else prepare,
                forkserver=forkserver,
                forked_files=[(files[0][0], base64.b64decode(files[0][1]))] if only_program else None,
            )
            outcome["zygote"] = forkserver is not None
            outcome["phase"] = "code"
            paths = req.get("outputPaths") or []
            if paths and not outcome["timedOut"] and not outcome["cancelled"]:
                max_file = int(req.get("maxFileBytes", 10 * 1024 * 1024))
                max_total = int(req.get("maxOutputFilesBytes", max_file))
                outcome["files"] = as_code_user(lambda: read_output_files(paths, max_file, max_total))
    except OpError as exc:
        send_json(b"x", {"error": exc.message, "code": exc.code})
        return
    outcome["oom"] = cgroup_counter(OOM_FILES) > oom_before
    outcome["pidsExhausted"] = cgroup_counter(PIDS_FILES) > pids_before
    send_json(b"x", outcome)


# ------------------------------------------------------------------ other ops


def wipe_scratch() -> None:
    """Empty every writable place; runs as the code user after all its processes died."""
    for top in SCRATCH_DIRS:
        try:
            names = os.listdir(top)
        except OSError:
            continue
        for name in names:
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if st.st_uid != CODE_UID:
                continue
            if stat.S_ISDIR(st.st_mode):
                remove_tree(path)
            else:
                os.unlink(path)
    remove_sysv_ipc()


def remove_tree(path: str) -> None:
    # Directories the program made unreadable are made writable again first.
    os.chmod(path, 0o700)
    for name in os.listdir(path):
        child = os.path.join(path, name)
        st = os.lstat(child)
        if stat.S_ISDIR(st.st_mode):
            remove_tree(child)
        else:
            os.unlink(child)
    os.rmdir(path)


IPC_RMID = 0


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


def op_reset(_: dict[str, Any]) -> dict[str, Any]:
    """Kill every process of the code user, then empty every writable place.

    Neither step creates a process; the wipe only happens once nothing of
    the code user is left alive to write again, and it acts as the code user.
    """
    if not kill_code_user():
        return {"clean": False}
    as_code_user(wipe_scratch)
    return {"clean": True}


def op_get_file(req: dict[str, Any]) -> dict[str, Any]:
    path = str(req["path"])
    max_bytes = int(req.get("maxBytes", 10 * 1024 * 1024))
    content = as_code_user(lambda: base64.b64encode(read_user_file(path, max_bytes)).decode())
    return {"content": content}


def op_put_file(req: dict[str, Any]) -> dict[str, Any]:
    path = str(req["path"])
    content = base64.b64decode(req["content"])

    def put() -> None:
        try:
            write_user_file(path, content)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OpError("sandbox_full", "no space left in /sandbox") from None
            raise OpError("validation_error", f"cannot write {path}: {exc.strerror}") from None

    as_code_user(put)
    return {}


def op_get_tar(req: dict[str, Any]) -> dict[str, Any]:
    """A gzipped tar of some paths under /sandbox (an installer's packages)."""
    names = [str(n) for n in req["paths"]]
    max_bytes = int(req.get("maxBytes", 256 * 1024 * 1024))

    def pack() -> str:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
            for name in names:
                parts = beneath_parts(name, SANDBOX)
                path = posixpath.join(SANDBOX, *parts)
                if os.path.lexists(path):
                    tar.add(path, arcname=posixpath.join(*parts))
        if buffer.tell() > max_bytes:
            raise OpError("payload_too_large", f"packages take more than {max_bytes} bytes")
        return base64.b64encode(buffer.getvalue()).decode()

    return {"content": as_code_user(pack)}


def op_put_tar(req: dict[str, Any]) -> dict[str, Any]:
    """Unpack a gzipped tar into /sandbox, as the code user (installed packages)."""
    data = base64.b64decode(req["content"])

    def unpack() -> None:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = []
            for member in tar.getmembers():
                # Only plain files, directories and links that stay beneath /sandbox;
                # the code user could not write anywhere else anyway.
                target = posixpath.normpath(posixpath.join(SANDBOX, member.name))
                if not target.startswith(SANDBOX + "/") or member.isdev():
                    continue
                members.append(member)
            try:
                tar.extractall(SANDBOX, members=members, filter="data")
            except TypeError:  # a Python without extraction filters
                tar.extractall(SANDBOX, members=members)

    try:
        as_code_user(unpack)
    except OpError as exc:
        if "No space" in exc.message:
            raise OpError("sandbox_full", "no space left in /sandbox for the packages") from None
        raise
    return {}


def op_kill(_: dict[str, Any]) -> dict[str, Any]:
    return {"clean": kill_code_user()}


def op_stats(_: dict[str, Any]) -> dict[str, Any]:
    """The container's CPU time so far (its cgroup's cpuacct), for metering sessions."""
    return {"cpuNs": cgroup_value(CPU_USAGE_FILES)}


def op_zygote(req: dict[str, Any]) -> dict[str, Any]:
    """Fork python runs from a fork server started with (argv, env)."""
    global FORKSERVER_CONFIG
    if running_as_code_user():
        raise OpError("bad_request", "the python fork server only exists in serve mode")
    FORKSERVER_CONFIG = {"argv": list(req["argv"]), "env": dict(req["env"])}
    return {}


OPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "reset": op_reset,
    "get_file": op_get_file,
    "put_file": op_put_file,
    "kill": op_kill,
    "stats": op_stats,
    "get_tar": op_get_tar,
    "put_tar": op_put_tar,
    "zygote": op_zygote,
    "ping": lambda req: {"pong": req.get("nonce")},
}


def handle(req: dict[str, Any]) -> None:
    op = req.get("op")
    if op == "run":
        op_run(req)
        if req.get("resetAfter"):
            # One-shot sandboxes are reset right after the result went out,
            # while the worker records it: the next run does not wait for it.
            handle({"op": "reset"})
        return
    if op == "cancel":
        # A cancel that arrived after its run ended: acknowledged with a frame
        # the worker skips, so the next request's reply stays in step.
        send_json(b"c", {"late": True})
        return
    handler = OPS.get(str(op))
    try:
        if handler is None:
            raise OpError("bad_request", f"unknown op {op!r}")
        reply = handler(req)
        reply["ok"] = True
    except OpError as exc:
        reply = {"ok": False, "error": exc.message, "code": exc.code}
    send_json(b"r", reply)


IDENTITY_DIR = "/run/isol8"  # a tmpfs; /etc/passwd and /etc/group are symlinks into it


def write_identity(uid: int, gid: int) -> None:
    """Name this sandbox's code uid ``sandbox`` in /etc/passwd and /etc/group.

    Each sandbox has a host uid of its own, which no image can know in
    advance; programs that look their user up (whoami, git, ssh, npm) find it.
    """
    for name, line in (
        ("passwd", f"sandbox:x:{uid}:{gid}:isol8 sandbox:/sandbox:/bin/bash\n"),
        ("group", f"sandbox:x:{gid}:\n"),
    ):
        with open(f"/etc/{name}.base") as fh:
            base = [entry for entry in fh.read().splitlines(keepends=True) if not entry.startswith("sandbox:")]
        path = f"{IDENTITY_DIR}/{name}"
        with open(path + ".new", "w") as fh:
            fh.write("".join(base) + line)
        os.chmod(path + ".new", 0o644)
        os.replace(path + ".new", path)


def set_code_user(args: list[str]) -> None:
    """``--uid N`` names the code user (gid N too); without it, the uid this process runs as."""
    global CODE_UID, CODE_GID
    if "--uid" in args:
        CODE_UID = CODE_GID = int(args[args.index("--uid") + 1])
    else:
        CODE_UID, CODE_GID = os.getuid(), os.getgid()


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "serve"
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    set_code_user(sys.argv[2:])
    if mode == "once":
        req = read_request(0)
        if req is not None:
            handle(req)
        return 0
    if mode == "keepalive":
        # The exec fallback's main process (no capability, not the code user):
        # names the code user, then waits to be stopped.
        write_identity(CODE_UID, CODE_GID)
        while True:
            signal.pause()
    if mode != "serve":
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    if running_as_code_user() or os.getuid() != 0:
        print("serve mode runs as root with --uid naming the code user", file=sys.stderr)
        return 2
    # Root's supplementary groups would grant group access while acting as the code user.
    os.setgroups([])
    os.umask(0o022)
    write_identity(CODE_UID, CODE_GID)
    while True:
        try:
            req = PENDING.pop(0) if PENDING else read_request(0)
        except (OpError, ValueError) as exc:
            # A malformed request means the stream is out of sync: stop, and
            # let the worker replace this container.
            print(f"isol8 launcher: bad request: {exc}", file=sys.stderr)
            return 3
        if req is None:
            return 0
        handle(req)
        # After the answer went out (the first time, or when it died): start
        # the python fork server while the worker has nothing to ask.
        ensure_forkserver()


if __name__ == "__main__":
    sys.exit(main())
