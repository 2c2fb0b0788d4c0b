"""The python interpreter of a stateful session: cells in one namespace, results as MIME bundles.

Started by the launcher (isol8_launcher/kernel.py) as the code user. Cells come
on fd 3, one JSON line each (``{"id", "code", "env"}``); events go to fd 4, one
JSON line each: ``ready`` once, ``display`` for each ``display(...)`` call and
each matplotlib figure (then a byte on fd 5 says the launcher read what was
printed before it), ``done`` after each cell with its value and its
exception. stdout and stderr are the cell's output, flushed before every event.

A cell runs like a notebook's: its statements, then the value of a trailing
expression (not when the line ends in ``;``), formatted through the IPython
display protocol (``_repr_html_``, ``_repr_png_``, ...). Top-level ``await``
works. SIGINT (the launcher's interrupt at the deadline) raises
KeyboardInterrupt in the cell and is ignored between cells. Tracebacks name
the cell ``<cell N>`` and show none of this file's frames.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import builtins
import fcntl
import json
import linecache
import os
import shutil
import signal
import sys
import traceback
import types
from typing import Any

CELL_FD, EVENTS_FD, ACK_FD = 3, 4, 5
KERNELS_DIR = os.path.dirname(os.path.abspath(__file__))
# Prebuilt in the python-science image (its font list): copied to a writable place.
MPL_PREBUILT = "/opt/isol8/matplotlib"
MPL_CONFIG = "/tmp/.isol8-matplotlib"
MAX_TEXT = 1024 * 1024  # one text/plain repr; longer ones are cut
# The display protocol's methods, in IPython's order, and what they give.
REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
)
BINARY_TYPES = {"image/png", "image/jpeg"}


class Kernel:
    """The cell loop: read a cell, run it in the user's namespace, report it."""

    def __init__(self, cells: int, events: int, acks: int) -> None:
        self.cells = os.fdopen(cells, "rb")
        self.events = events
        self.acks = acks
        self.module = types.ModuleType("__main__")
        self.module.__dict__["__builtins__"] = builtins
        self.namespace = self.module.__dict__
        self.loop = asyncio.new_event_loop()
        self.running = False

    # ---------------------------------------------------------------- events

    def emit(self, event: dict[str, Any]) -> None:
        """One event line to the launcher, after what the cell printed so far."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        data = (json.dumps(event, default=str) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self.events, view):]

    def display(self, *objs: Any) -> None:
        """``display(obj, ...)``: one display event per object (its MIME bundle)."""
        for obj in objs:
            self.emit({"type": "display", "data": mime_bundle(obj), "ack": True})
            os.read(self.acks, 1)  # the launcher read what the cell printed before: the order is kept

    def show_figures(self) -> None:
        """Every open matplotlib figure as a display, then closed (a cell's plots, shown or left open)."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        try:
            figures = [pyplot.figure(n) for n in pyplot.get_fignums()]
            for figure in figures:
                self.display(figure)
            pyplot.close("all")
        except Exception:  # noqa: BLE001 - a broken figure is the user's: said on stderr, the cell goes on
            traceback.print_exc()

    # ----------------------------------------------------------------- cells

    def serve(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.emit({"type": "ready"})
        while True:
            try:
                line = self.cells.readline()
                if not line:
                    return  # the launcher closed the cell pipe: the session ends
                self.cell(json.loads(line))
            except KeyboardInterrupt:
                # An interrupt that came after the cell was reported: nothing to stop.
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    def cell(self, request: dict[str, Any]) -> None:
        cell_id = int(request.get("id") or 0)
        code = str(request.get("code") or "")
        env = {str(name): str(text) for name, text in (request.get("env") or {}).items()}
        before = {name: os.environ.get(name) for name in env}
        os.environ.update(env)  # the request's variables and secrets, for this cell only
        value: Any = None
        exception = None
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            value = self.run(code, f"<cell {cell_id}>")
        except SystemExit as exc:
            if exc.code not in (None, 0):
                exception = self.report(exc)
        except BaseException as exc:  # noqa: BLE001 - the user's exception, reported as the cell's
            exception = self.report(exc)
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        bundle = None
        try:
            if value is not None:
                self.namespace["_"] = value
                bundle = mime_bundle(value)
                if is_figure(value):
                    sys.modules["matplotlib.pyplot"].close(value)
            self.show_figures()
        except Exception as exc:  # noqa: BLE001 - a failing repr is the cell's error
            exception = exception or self.report(exc)
        for name, previous in before.items():
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous
        self.emit({"type": "done", "id": cell_id, "status": "error" if exception else "ok",
                   "value": bundle, "exception": exception})

    def run(self, code: str, filename: str) -> Any:
        """The cell's statements, then its trailing expression's value (None without one)."""
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        tree = ast.parse(code, filename, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
            last = ast.Expression(tree.body[-1].value)
            tree.body.pop()
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        if tree.body:
            self.evaluate(compile(tree, filename, "exec", flags=flags))
        if last is None:
            return None
        return self.evaluate(compile(last, filename, "eval", flags=flags))

    def evaluate(self, code: types.CodeType) -> Any:
        result = eval(code, self.namespace)  # running the user's cell is the point
        if code.co_flags & 0x80:  # CO_COROUTINE: the cell awaited at top level
            result = self.loop.run_until_complete(result)
        return result

    def report(self, exc: BaseException) -> dict[str, Any]:
        """The exception on stderr and as ``{"ename", "evalue", "traceback"}``, without this file's frames."""
        tb = exc.__traceback__
        while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell "):
            tb = tb.tb_next  # the kernel's and asyncio's frames above the cell
        lines = traceback.format_exception(type(exc), exc, tb)
        sys.stderr.write("".join(lines))
        return {"ename": type(exc).__name__, "evalue": str(exc), "traceback": lines}


# ------------------------------------------------------------------- display


def is_figure(obj: Any) -> bool:
    return type(obj).__module__.startswith("matplotlib.") and hasattr(obj, "savefig") and hasattr(obj, "canvas")


def figure_png(figure: Any) -> str:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def mime_bundle(obj: Any) -> dict[str, Any]:
    """``obj`` as a MIME bundle: what its ``_repr_*_`` methods give, and always ``text/plain``."""
    bundle: dict[str, Any] = {}
    if is_figure(obj):
        bundle["image/png"] = figure_png(obj)
    mimebundle = _call(obj, "_repr_mimebundle_")
    if isinstance(mimebundle, tuple):
        mimebundle = mimebundle[0]
    if isinstance(mimebundle, dict):
        for mime, data in mimebundle.items():
            _add(bundle, str(mime), data)
    for method, mime in REPR_METHODS:
        if mime not in bundle:
            _add(bundle, mime, _call(obj, method))
    if "text/plain" not in bundle:
        text = repr(obj)
        bundle["text/plain"] = text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"
    return bundle


def _call(obj: Any, method: str) -> Any:
    """``obj.method()`` when the class offers it (not a class's unbound method); None when it fails."""
    if isinstance(obj, type) or not callable(getattr(type(obj), method, None)):
        return None
    try:
        return getattr(obj, method)()
    except Exception:  # noqa: BLE001 - a representation that fails is left out, as IPython does
        return None


def _add(bundle: dict[str, Any], mime: str, data: Any) -> None:
    if isinstance(data, tuple) and len(data) == 2:
        data = data[0]  # (data, metadata)
    if data is None:
        return
    if mime in BINARY_TYPES and isinstance(data, bytes):
        data = base64.b64encode(data).decode()
    elif mime == "application/json":
        try:
            json.dumps(data)
        except (TypeError, ValueError):
            return
    elif isinstance(data, bytes):
        data = data.decode(errors="replace")
    elif not isinstance(data, str):
        data = str(data)
    bundle[mime] = data


# --------------------------------------------------------------------- start


def _private_fd(fd: int) -> int:
    """``fd`` moved above the user's usual descriptors, closed on exec (a cell's programs do not get it)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
    os.close(fd)
    return moved


def _matplotlib_defaults() -> None:
    """matplotlib's figures go to the kernel's backend; its prebuilt font list to a writable config dir."""
    os.environ.setdefault("MPLBACKEND", "module://isol8_mpl_backend")
    if "MPLCONFIGDIR" in os.environ or not os.path.isdir(MPL_PREBUILT):
        return
    try:
        shutil.copytree(MPL_PREBUILT, MPL_CONFIG, dirs_exist_ok=True)
        os.environ["MPLCONFIGDIR"] = MPL_CONFIG
    except OSError:
        pass  # matplotlib finds a place of its own


def main() -> None:
    kernel = Kernel(_private_fd(CELL_FD), _private_fd(EVENTS_FD), _private_fd(ACK_FD))
    sys.modules["isol8_kernel"] = sys.modules[__name__]
    sys.modules["__main__"] = kernel.module  # pickle, dataclasses and doctest see the user's namespace
    sys.path.insert(0, KERNELS_DIR)  # isol8_mpl_backend
    sys.path.insert(0, os.getcwd())  # the session's files import like a script's neighbours
    _matplotlib_defaults()
    builtins.display = kernel.display  # type: ignore[attr-defined]
    global KERNEL
    KERNEL = kernel
    kernel.serve()


KERNEL: Kernel | None = None

if __name__ == "__main__":
    main()
