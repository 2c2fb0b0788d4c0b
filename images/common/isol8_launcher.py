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

CODE_UID = 1000
CODE_GID = 1000
SANDBOX = "/sandbox"
# Places the code user can write to. A reset empties all of them, so nothing of
# one run is visible to the next one.
SCRATCH_DIRS = ("/sandbox", "/tmp", "/dev/shm", "/dev/mqueue")
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


def become_code_user() -> None:
    os.setgroups([])
    os.setgid(CODE_GID)
    os.setuid(CODE_UID)
    os.umask(0o022)


def as_code_user(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the code user's uid and return its JSON-able result.

    In ``serve`` mode this forks: the child drops to the code uid (which also
    makes it non-dumpable, so the program cannot reach into it through /proc),
    runs ``fn`` and sends the result back through a pipe. In ``once`` mode the
    launcher already is the code user.
    """
    if running_as_code_user():
        return fn()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            become_code_user()
            try:
                result: Any = {"ok": fn()}
            except OpError as exc:
                result = {"op_error": [exc.code, exc.message]}
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                result = {"op_error": ["internal", f"{type(exc).__name__}: {exc}"]}
            data = json.dumps(result).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while True:
        chunk = os.read(read_fd, READ_CHUNK)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    if not chunks:
        raise OpError("internal", "helper process died")
    result = json.loads(b"".join(chunks))
    if "op_error" in result:
        raise OpError(*result["op_error"])
    return result["ok"]


def live_code_processes() -> bool:
    """True while a process of the code user other than this one is alive.

    Zombies do not count: they are dead, and kill() still "succeeds" on them.
    /proc/<pid>/status is read rather than the directory's owner, because a
    process that made itself non-dumpable shows a root-owned directory.
    """
    me = str(os.getpid())
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == me:
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
        if uid == str(CODE_UID) and state not in ("Z", "X"):
            return True
    return False


def kill_code_user() -> bool:
    """SIGKILL every process of the code user; True when none is left.

    ``kill(-1)`` from the code uid reaches exactly the code user's processes
    (a root process without CAP_KILL could not signal them), including children
    that called setsid(). The kernel aborts a fork() whose parent has a fatal
    signal pending, so a fork bomb cannot outrun the sweep; it is repeated
    until /proc shows nothing alive, to be sure.
    """

    return bool(as_code_user(sweep_code_user))


def sweep_code_user() -> bool:
    """As the code user: SIGKILL all its other processes until none is alive."""
    for _ in range(200):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return True
        if not live_code_processes():
            return True
        time.sleep(0.005)
    return False


# ------------------------------------------------------------------- file paths


def sandbox_parts(path: str) -> list[str]:
    """Split a user path into components beneath /sandbox, refusing escapes."""
    if "\x00" in path:
        raise OpError("path_outside_sandbox", "path contains a NUL byte")
    full = path if path.startswith("/") else posixpath.join(SANDBOX, path)
    norm = posixpath.normpath(full)
    if norm != SANDBOX and not norm.startswith(SANDBOX + "/"):
        raise OpError("path_outside_sandbox", f"path is outside {SANDBOX}: {path}")
    return [p for p in norm[len(SANDBOX) :].split("/") if p]


def open_beneath(parts: list[str], *, create_dirs: bool = False) -> tuple[int, str]:
    """Open the parent directory of ``parts`` beneath /sandbox.

    Every component is opened with O_NOFOLLOW relative to the previous one.
    Symlinks are resolved by hand and only while they stay beneath /sandbox;
    one that leads anywhere else is refused. Returns (dir_fd, last name).
    """
    if not parts:
        raise OpError("path_outside_sandbox", "path names /sandbox itself")
    pending = list(parts)
    stack: list[int] = [os.open(SANDBOX, os.O_RDONLY | os.O_DIRECTORY)]
    names: list[str] = []
    links = 0
    try:
        while len(pending) > 1:
            name = pending.pop(0)
            if name == "..":
                if len(stack) == 1:
                    raise OpError("path_outside_sandbox", "path leads outside /sandbox")
                os.close(stack.pop())
                names.pop()
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
                if links > MAX_SYMLINKS:
                    raise OpError("path_outside_sandbox", "too many symlinks") from None
                target = os.readlink(name, dir_fd=stack[-1])
                if target.startswith("/"):
                    # Restart from /sandbox with the absolute target.
                    new_parts = sandbox_parts(target)
                    for extra in stack[1:]:
                        os.close(extra)
                    del stack[1:]
                    names.clear()
                    pending = new_parts + pending
                else:
                    pending = [p for p in target.split("/") if p and p != "."] + pending
                continue
            stack.append(fd)
            names.append(name)
        last = pending[0]
        if last == "..":
            raise OpError("path_outside_sandbox", "path leads outside /sandbox")
        return stack.pop(), last
    finally:
        for fd in stack:
            os.close(fd)


def resolve_final(dir_fd: int, name: str) -> tuple[int, str]:
    """Follow a final-component symlink while it stays beneath /sandbox."""
    for _ in range(MAX_SYMLINKS):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return dir_fd, name
        if not stat.S_ISLNK(st.st_mode):
            return dir_fd, name
        target = os.readlink(name, dir_fd=dir_fd)
        if target.startswith("/"):
            parts = sandbox_parts(target)
        else:
            # A relative target is resolved against the directory that holds it.
            here = os.readlink(f"/proc/self/fd/{dir_fd}")
            parts = sandbox_parts(posixpath.join(here, target))
        os.close(dir_fd)
        dir_fd, name = open_beneath(parts)
    os.close(dir_fd)
    raise OpError("path_outside_sandbox", "too many symlinks")


def read_user_file(path: str, max_bytes: int) -> bytes:
    dir_fd, name = resolve_final(*open_beneath(sandbox_parts(path)))
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        raise OpError("not_found", f"file not found: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OpError("path_outside_sandbox", "symlink leads outside /sandbox") from None
        raise
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OpError("not_found", f"not a regular file: {path}")
        if st.st_size > max_bytes:
            raise OpError("payload_too_large", f"file is {st.st_size} bytes, limit {max_bytes}")
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise OpError("payload_too_large", f"file is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_user_file(path: str, content: bytes, mode: int = 0o644) -> None:
    if path.startswith("/tmp/") or path == "/tmp":
        # /tmp is only reachable for files sent with a run; it holds nothing to protect.
        target = posixpath.normpath(path)
        os.makedirs(posixpath.dirname(target), exist_ok=True)
        with open(target, "wb") as fh:
            fh.write(content)
        return
    dir_fd, name = resolve_final(*open_beneath(sandbox_parts(path), create_dirs=True))
    try:
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode, dir_fd=dir_fd
        )
    except IsADirectoryError:
        raise OpError("validation_error", f"path is a directory: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OpError("path_outside_sandbox", "symlink leads outside /sandbox") from None
        raise
    finally:
        os.close(dir_fd)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OpError("sandbox_full", "no space left in /sandbox") from None
        raise
    finally:
        os.close(fd)


def write_files(files: list[list[str]]) -> None:
    for path, b64 in files:
        try:
            write_user_file(path, base64.b64decode(b64))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OpError("sandbox_full", "no space left in the sandbox") from None
            raise OpError("validation_error", f"cannot write {path}: {exc.strerror}") from None


def read_tmp_file(path: str, max_bytes: int) -> bytes:
    """A run's output file under /tmp (anything the code could read itself anyway)."""
    try:
        fd = os.open(posixpath.normpath(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise OpError("not_found", f"file not found: {path}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            raise OpError("not_found", f"not a regular file within the size limit: {path}")
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(max_bytes + 1)[:max_bytes]
    finally:
        os.close(fd)


def read_files(paths: list[str], max_bytes: int) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in paths:
        try:
            if path.startswith("/tmp/"):
                data = read_tmp_file(path, max_bytes)
            else:
                data = read_user_file(path, max_bytes)
            found[path] = base64.b64encode(data).decode()
        except (OpError, OSError):
            continue  # missing or refused output paths are omitted, as isol8 does
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
    pid = os.fork()
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
def _isol8_serve(fd):
    server = _socket.socket(fileno=fd)
    prctl = ctypes.CDLL(None, use_errno=True).prctl
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
        pid = os.fork()
        if pid == 0:
            try:
                server.close()
                os.setsid()
                os.setgroups([])
                os.setgid(1000)
                os.setuid(1000)
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
_isol8_ctl, _isol8_prctl = _isol8_serve(int(sys.argv[1]))
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
        pid = os.fork()
        if pid == 0:  # child: stdin/stdout on /dev/null, stderr shared with the launcher
            try:
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                close_fds_except({theirs.fileno()})
                os.set_inheritable(theirs.fileno(), True)
                default_signals()
                os.chdir("/")
                os.execvpe(argv[0], [*argv, "-c", FORKSERVER_SOURCE, str(theirs.fileno())], env)
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
        if not line:
            for fd in (in_w, out_r, err_r, ctl_w):
                os.close(fd)
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
                outcome["files"] = as_code_user(lambda: read_files(paths, max_file))
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


def remove_sysv_ipc() -> None:
    """Remove System V shared memory, queues and semaphores the code user left."""
    for kind, flag in (("shm", "-m"), ("msg", "-q"), ("sem", "-s")):
        try:
            with open(f"/proc/sysvipc/{kind}") as fh:
                lines = fh.readlines()[1:]
        except OSError:
            continue
        ids = [line.split()[1] for line in lines if len(line.split()) > 1]
        if ids:
            pid = os.fork()
            if pid == 0:
                args = ["ipcrm"]
                for ipc_id in ids:
                    args += [flag, ipc_id]
                os.execvp("ipcrm", args)
            os.waitpid(pid, 0)


def op_reset(_: dict[str, Any]) -> dict[str, Any]:
    """Kill every process of the code user, then empty every writable place.

    One helper process does both, as the code user; the wipe only happens
    once nothing of the code user is left alive to write again.
    """

    def reset() -> bool:
        if not sweep_code_user():
            return False
        wipe_scratch()
        return True

    return {"clean": bool(as_code_user(reset))}


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
                parts = sandbox_parts(name)
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


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "serve"
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if mode == "once":
        req = read_request(0)
        if req is not None:
            handle(req)
        return 0
    if mode != "serve":
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    if running_as_code_user():
        print("serve mode must not run as the code user", file=sys.stderr)
        return 2
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
