"""The program of the python fork server: ``python3 forkserver.py FD UID GID``.

It starts like ``python3`` (as root, with the launcher's capabilities) and
never runs user code itself: on request it receives four descriptors (stdin,
stdout, stderr, control) on the socket FD and forks. The child drops to the
code user (UID, GID), forgets the modules a fresh interpreter would not have,
and waits on its control pipe for its run; then it runs the script as
``python3 script`` would: __main__, sys.argv, sys.path[0], the user site
directory, exit status, and tracebacks without our frames. The server writes
the child's pid, and its wait status once it ended, to the launcher.
A run's data (code, env, files) only ever reaches its own process, so no run
can find another's in the memory it inherits.

The launcher starts it as a program (forkclient.ForkServer); nothing imports
it. What makes a python run cost ~1 ms instead of ~20 ms is that this
interpreter is already started, so its own start-up must stay cheap and its
imports invisible: at its top it imports only ``sys``; the server imports
os, _socket and ctypes, the run only what a fresh interpreter already has
(os, marshal, site, atexit, builtins, _frozen_importlib_external). No typing
and no ``from __future__``: they would cost start-up time (the annotations
that name typing's types are strings, read by mypy only).
"""

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn


def serve(fd: int, uid: int, gid: int) -> "tuple[int, Callable[..., int]]":
    """Fork a run's process for each request on the socket ``fd``; only a forked child returns.

    The child returns its control descriptor and prctl once it is the code
    user with the request's stdin, stdout and stderr; the server itself
    exits when the launcher goes away.
    """
    import _socket
    import ctypes
    import os

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
                fds += [int.from_bytes(data[i : i + 4], sys.byteorder) for i in range(0, len(data) - 3, 4)]
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
            except BaseException as exc:  # noqa: BLE001 - told to the run's stderr
                os.write(fds[2], f"isol8: cannot start the run: {exc}\n".encode())
                os._exit(127)
        for fd in fds:
            os.close(fd)
        server.sendall(b"%d\n" % pid)
        _, status = os.waitpid(pid, 0)
        server.sendall(b"%d\n" % status)


def forget(fresh: "set[str]") -> None:
    """Drop from sys.modules what the server imported: the run sees a fresh interpreter's modules."""
    for name in [m for m in sys.modules if m not in fresh]:
        del sys.modules[name]


def wait_for_run(fd: int, prctl: "Callable[..., int]") -> str:
    """Wait on the control pipe for this process's run, set it up as `python3 script` would; the script's path."""
    import marshal
    import os

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
    prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
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


def exit_run(code: int) -> "NoReturn":
    """End the run with ``code``.

    What interpreter shutdown does that a program can observe: wait for its
    threads, run its atexit handlers, flush its output. The rest (tearing
    down modules) is skipped: it costs ~5 ms and nothing can see it.
    """
    import os

    if "threading" in sys.modules:
        sys.modules["threading"]._shutdown()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - a closed or replaced stream must not stop the exit
            pass
    os._exit(code)


def run_script(path: str) -> None:
    """Run ``path`` as __main__.

    What `python3 path` sets up for __main__ (runpy.run_path would first
    import pkgutil and probe for zip files: ~12 ms for nothing).
    """
    import builtins
    from _frozen_importlib_external import SourceFileLoader

    with open(path, "rb") as fh:
        source = fh.read()
    code = compile(source, path, "exec", dont_inherit=True)
    main = type(sys)("__main__")
    main.__file__ = path
    main.__cached__ = None  # type: ignore[attr-defined]
    main.__loader__ = SourceFileLoader("__main__", path)
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


# The run's frames are this module's and run_script's only, as the `-c` program
# that this file replaces had: no main() between them and the user's code.
if __name__ == "__main__":
    _fresh = set(sys.modules)
    _ctl, _prctl = serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    forget(_fresh)
    del _fresh
    _script = wait_for_run(_ctl, _prctl)
    del _ctl, _prctl
    try:
        run_script(_script)
    except SystemExit as _stop:
        _code = _stop.code
        if _code is None:
            exit_run(0)
        if isinstance(_code, int):
            exit_run(_code & 0xFF)
        print(_code, file=sys.stderr)
        exit_run(1)
    except BaseException as _exc:  # noqa: BLE001 - reported as python3 would
        _tb = _exc.__traceback__
        while _tb is not None and _tb.tb_frame.f_code.co_filename != _script:
            _tb = _tb.tb_next
        _exc.__traceback__ = _tb
        sys.excepthook(type(_exc), _exc, _tb)
        exit_run(1)
    exit_run(0)
