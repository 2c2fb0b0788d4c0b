"""The ``isol8`` command line: run code on a remote isol8 server, manage sessions and files.

It mirrors isol8's own CLI (``isol8 run --host ...``): output is streamed live
by default and the command exits with the program's exit code, so it can be
used in shell pipelines and CI steps. Every failure is one ``[ERR] ...`` line
on stderr: exit code 2 for a usage mistake, 1 for anything the server or the
network said.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from isol8_client import terminal
from isol8_client._version import __version__
from isol8_client.client import RemoteIsol8
from isol8_client.errors import (
    AuthenticationError,
    Isol8Error,
    PermissionDeniedError,
    QuotaExceededError,
    UnavailableError,
)
from isol8_client.models import ExecutionResult, MimeBundle, SessionInfo, StreamEvent

# isol8's RuntimeRegistry.detect table (extension → runtime).
RUNTIME_BY_EXTENSION = {
    ".py": "python",
    ".mjs": "node",
    ".js": "node",
    ".cjs": "node",
    ".ts": "bun",
    ".mts": "deno",
    ".sh": "bash",
}
USAGE_ERROR = 2
FAILURE = 1

Handler = Callable[[argparse.Namespace, httpx.BaseTransport | None], int]


class UsageError(Exception):
    """A mistake on the command line, reported without a traceback (exit code 2)."""


# -- entry point ---------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Run one ``isol8`` command and return its exit code (``transport`` is for tests)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["serve"]:
        # Handled before argparse so that every option (even --help) goes to manage.py.
        return serve(args_list[1:])
    args = build_parser().parse_args(args_list)
    handler: Handler = args.handler
    try:
        return handler(args, transport)
    except UsageError as exc:
        return fail(str(exc), USAGE_ERROR)
    except Isol8Error as exc:
        return fail(describe_error(exc), FAILURE)
    except KeyboardInterrupt:
        return 130


def fail(message: str, code: int) -> int:
    print(f"[ERR] {message}", file=sys.stderr, flush=True)
    return code


def describe_error(exc: Isol8Error) -> str:
    """One line that says what went wrong and what to do about it."""
    if isinstance(exc, AuthenticationError):
        return f"Authentication failed ({exc.status}): {exc.message}. Check --key or ISOL8_API_KEY."
    if isinstance(exc, QuotaExceededError):
        return f"Quota exceeded ({exc.status} {exc.code}): {exc.message}{_retry_hint(exc)}"
    if isinstance(exc, UnavailableError):
        return f"Server unavailable ({exc.status}): {exc.message}{_retry_hint(exc)}"
    if isinstance(exc, PermissionDeniedError):
        return f"Not allowed ({exc.status} {exc.code}): {exc.message}"
    return str(exc)


def _retry_hint(exc: Isol8Error) -> str:
    if exc.retry_after is None:
        return ""
    return f"; Retry-After: {exc.retry_after:g} s (or pass --retry to wait automatically)"


# -- argument parsing ------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree: run, shell, sessions list|stop, file put|get, mcp, serve."""
    parser = argparse.ArgumentParser(prog="isol8", description="Run code on a remote isol8 server.")
    parser.add_argument("--version", action="version", version=f"isol8 client {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options()
    _add_run(commands, common)
    _add_shell(commands, common)
    _add_sessions(commands, common)
    _add_file(commands, common)
    _add_mcp(commands, common)
    commands.add_parser(
        "serve", help="start the server: runs `python manage.py serve ARGS` in the project checkout",
        add_help=False,
    )
    return parser


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", help="server URL (default: $ISOL8_HOST), e.g. http://localhost:3000")
    common.add_argument("--key", help="API key (default: $ISOL8_API_KEY)")
    common.add_argument(
        "--retry", action="store_true", help="wait and retry when the server answers 429 or 503"
    )
    return common


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    run = commands.add_parser("run", parents=[common], help="run code and stream its output")
    run.add_argument("file", nargs="?", help="source file; the runtime follows its extension")
    run.add_argument("-e", "--eval", dest="code", help="code to run (default runtime: python)")
    run.add_argument("--cmd", help="shell command, run as `bash -c` (default runtime: bash)")
    run.add_argument("-r", "--runtime", help="python, node, bun, deno or bash")
    run.add_argument("--persistent", action="store_true", help="run in a session deleted at exit")
    run.add_argument("--session-id", "--session", dest="session_id", metavar="ID",
                     help="run in this session and keep it after exit")
    run.add_argument("--stateful", action="store_true",
                     help="with --session: the session keeps one interpreter, so variables live on "
                          "between runs; the value of the last expression is printed after the output")
    run.add_argument("--save-outputs", metavar="DIR",
                     help="write the run's images and HTML (display outputs, then the value) to DIR "
                          "as output-<n>.png|svg|html")
    run.add_argument("--stdin", help="text piped to the program's stdin")
    run.add_argument("--timeout", type=int, metavar="MS", help="time limit in milliseconds")
    run.add_argument("--memory", help="memory limit, e.g. 512m")
    run.add_argument("--cpu", type=float, help="CPU limit (number of CPUs)")
    run.add_argument("--pids-limit", type=int, help="maximum number of processes")
    run.add_argument("--max-output", type=int, metavar="BYTES", help="output limit per stream")
    run.add_argument("--net", help="network mode (none unless the tenant allows more)")
    run.add_argument("--workdir", help="working directory inside /sandbox")
    run.add_argument("--env", action="append", default=[], metavar="K=V", help="environment variable")
    run.add_argument("--secret", action="append", default=[], metavar="K=V",
                     help="secret environment variable, masked as *** in the output")
    run.add_argument("--no-stream", dest="stream", action="store_false",
                     help="wait for the end and print the whole output")
    run.add_argument("-i", "--interactive", action="store_true",
                     help="this terminal's (or pipe's) stdin goes to the program as it runs; "
                          "Ctrl-C sends it SIGINT (over the WebSocket route)")
    run.set_defaults(handler=cmd_run)


def _add_shell(commands: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
    shell = commands.add_parser(
        "shell", parents=[common], help="a terminal in a session (bash -i unless --cmd)",
        description="Runs a command (default `bash -i`) on a pseudo-terminal in session SESSION "
        "(created if it does not exist), with this terminal in raw mode: keys, Ctrl-C and the "
        "window size go to it. Exit the shell (or Ctrl-D) to leave; the session stays.",
    )
    shell.add_argument("session", metavar="SESSION", help="session id")
    shell.add_argument("--cmd", default="bash -i", help="what to run (default: bash -i; e.g. python3)")
    shell.add_argument("-r", "--runtime",
                       help="the session's runtime (default: the existing session's, else bash)")
    shell.add_argument("--timeout", type=int, metavar="MS",
                       help="time limit in milliseconds (default: the server's)")
    shell.set_defaults(handler=cmd_shell)


def _add_sessions(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                  common: argparse.ArgumentParser) -> None:
    sessions = commands.add_parser("sessions", help="list or stop persistent sessions")
    actions = sessions.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="list your sessions")
    listing.add_argument("--json", action="store_true", help="print the server's JSON")
    listing.set_defaults(handler=cmd_sessions_list)
    stop = actions.add_parser("stop", parents=[common], help="stop and delete a session")
    stop.add_argument("id", help="session id")
    stop.set_defaults(handler=cmd_sessions_stop)


def _add_file(commands: argparse._SubParsersAction[argparse.ArgumentParser],
              common: argparse.ArgumentParser) -> None:
    files = commands.add_parser("file", help="copy files into or out of a session")
    actions = files.add_subparsers(dest="action", required=True, metavar="ACTION")
    put = actions.add_parser("put", parents=[common], help="upload LOCAL to REMOTE in a session")
    put.add_argument("local")
    put.add_argument("remote")
    put.add_argument("--session-id", required=True)
    put.set_defaults(handler=cmd_file_put)
    get = actions.add_parser("get", parents=[common], help="download REMOTE from a session")
    get.add_argument("remote")
    get.add_argument("local", nargs="?", help="destination (default: REMOTE's name here; - for stdout)")
    get.add_argument("--session-id", required=True)
    get.set_defaults(handler=cmd_file_get)


def _add_mcp(commands: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    mcp = commands.add_parser(
        "mcp", parents=[common], help="serve the isol8 server's tools to AI assistants over MCP",
        description="An MCP server with the tools run_code, session_run, upload_file, download_file, "
        "list_sessions and stop_session, which call the isol8 server given by --host/--key "
        "($ISOL8_HOST/$ISOL8_API_KEY). Needs the MCP SDK: pip install 'isol8-client[mcp]'.",
    )
    mcp.add_argument("--transport", choices=("stdio", "http"), default="stdio",
                     help="stdio (default): the MCP host starts this command; "
                          "http: streamable HTTP at http://BIND:PORT/mcp")
    # Not --host: in every isol8 command --host is the isol8 server's URL.
    mcp.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                     help="http: address to listen on (default 127.0.0.1, this machine only)")
    mcp.add_argument("--port", type=int, default=8000, help="http: port to listen on (default 8000)")
    mcp.set_defaults(handler=cmd_mcp)


# -- connecting ------------------------------------------------------------------


def connect(
    args: argparse.Namespace, transport: httpx.BaseTransport | None, session_id: str | None = None,
    **options: Any,
) -> RemoteIsol8:
    """A client for --host/--key (or $ISOL8_HOST/$ISOL8_API_KEY)."""
    host, key = endpoint(args)
    return RemoteIsol8(host, key, session_id, retry=args.retry, transport=transport, **options)


def endpoint(args: argparse.Namespace) -> tuple[str, str]:
    """Server URL and API key from the flags or the environment, refusing to guess either."""
    host = args.host or os.environ.get("ISOL8_HOST")
    if not host:
        raise UsageError("No server given: use --host URL or set ISOL8_HOST (e.g. http://localhost:3000).")
    key = args.key or os.environ.get("ISOL8_API_KEY")
    if not key:
        raise UsageError("API key required: use --key or set ISOL8_API_KEY.")
    return host, key


# -- isol8 run -------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    """``isol8 run``: execute code, streamed by default, and pass the exit code on."""
    endpoint(args)  # complain about a missing key before waiting for code on stdin
    if args.interactive and not (args.file or args.code is not None or args.cmd):
        raise UsageError("-i gives stdin to the program: give the code as FILE, -e CODE or --cmd.")
    if args.interactive and (args.stdin is not None or not args.stream):
        raise UsageError("-i streams stdin live: it goes with neither --stdin nor --no-stream.")
    check_cell_flags(args)
    source = read_source(args)
    session_id = args.session_id or (f"cli-{int(time.time() * 1000)}" if args.persistent else None)
    client = connect(args, transport, session_id, stateful=args.stateful, **run_options(args))
    cells = args.stateful or args.save_outputs is not None
    try:
        if args.interactive:
            return run_interactive(client, source)
        if args.stream:
            return run_streamed(client, source, cells=cells, save_dir=args.save_outputs)
        result = client.execute(**source)
        exit_code = print_result(result)
        if cells:
            report_cell(result, [], args.save_outputs)
        return exit_code
    finally:
        # An explicit --session-id is the user's to keep; a generated one is ours to delete.
        finish_session(client, keep=args.session_id is not None)


def check_cell_flags(args: argparse.Namespace) -> None:
    """``--stateful`` needs a named session; cells and their outputs do not go with ``-i``."""
    if args.stateful and not args.session_id:
        raise UsageError("--stateful needs --session ID: the interpreter and its variables live in that session.")
    if args.interactive and (args.stateful or args.save_outputs is not None):
        raise UsageError("-i gives the program live stdin, and a stateful cell takes none: "
                         "-i goes with neither --stateful nor --save-outputs.")


def run_streamed(client: RemoteIsol8, source: dict[str, Any], *, cells: bool, save_dir: str | None) -> int:
    """The default ``isol8 run``: output streamed live, then (for a cell) its value and outputs."""
    displays: list[MimeBundle] = []
    try:
        exit_code = stream_to_terminal(client.execute_stream(**source), displays)
    except KeyboardInterrupt:
        # Ctrl-C stops the program on the server too, not just our stream.
        if client.last_execution_id:
            try:
                client.cancel(client.last_execution_id)
            except Isol8Error:
                pass
        raise
    if cells:
        report_cell(final_result(client), displays, save_dir)
    return exit_code


def run_interactive(client: RemoteIsol8, source: dict[str, Any]) -> int:
    """``isol8 run -i``: stdin pumped into the run as it comes, Ctrl-C → SIGINT, the exit code passed on."""
    with client.interactive(**source) as run:
        terminal.pump_stdin(run)
        with terminal.interrupts_go_to(run):
            exit_code = terminal.copy_output(run)
    if exit_code is None:
        return fail("The run ended before the program's exit code arrived.", FAILURE)
    return exit_code


# -- isol8 shell -----------------------------------------------------------------


def cmd_shell(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    """``isol8 shell SESSION``: a terminal in the session; the session stays afterwards."""
    client = connect(args, transport, args.session)
    try:
        runtime = args.runtime or next(
            (s.runtime for s in client.list_sessions() if s.id == args.session and s.runtime), "bash"
        )
        run = client.interactive(cmd=args.cmd, runtime=runtime, tty=True, timeout_ms=args.timeout)
        with run, terminal.raw_terminal(run), terminal.interrupts_go_to(run):
            terminal.pump_stdin(run)
            exit_code = terminal.copy_output(run)
    finally:
        client.close()
    if exit_code is None:
        return fail("The shell ended before its exit code arrived.", FAILURE)
    return exit_code


def read_source(args: argparse.Namespace) -> dict[str, Any]:
    """The code (or cmd), runtime and file extension of ``isol8 run``, as execute() keywords."""
    given = [name for name, value in (("FILE", args.file), ("-e", args.code), ("--cmd", args.cmd)) if value]
    if len(given) > 1:
        raise UsageError(f"Give only one of FILE, -e/--eval or --cmd (got {' and '.join(given)}).")
    source: dict[str, Any] = {}
    if args.cmd:
        source.update(cmd=args.cmd, runtime=args.runtime or "bash")
    elif args.file:
        source.update(code=_read_file(args.file), **_file_runtime(args.file, args.runtime))
        if args.stateful:
            source.pop("file_extension", None)  # a cell is not a file: the server refuses one
    else:
        code = args.code if args.code is not None else sys.stdin.read()
        if not code.strip():
            raise UsageError("No code to run: give a FILE, -e CODE, --cmd, or pipe code on stdin.")
        source.update(code=code, runtime=args.runtime or "python")
    if args.stdin is not None:
        source["stdin"] = args.stdin
    if args.workdir:
        source["workdir"] = args.workdir
    if args.env:
        source["env"] = parse_pairs(args.env, "--env")
    return source


def _read_file(name: str) -> str:
    try:
        return Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"Cannot read {name}: {exc}") from exc


def _file_runtime(name: str, runtime: str | None) -> dict[str, str]:
    """Runtime from --runtime or the extension; the extension is sent too (``.cjs`` matters to node)."""
    suffix = Path(name).suffix
    detected = runtime or RUNTIME_BY_EXTENSION.get(suffix.lower())
    if detected is None:
        raise UsageError(f"Cannot detect runtime for {name}. Use --runtime to specify.")
    return {"runtime": detected, "file_extension": suffix} if suffix else {"runtime": detected}


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """isol8 options from the limit flags; unset flags leave the server's defaults."""
    return {
        "timeout_ms": args.timeout,
        "memory_limit": args.memory,
        "cpu_limit": args.cpu,
        "pids_limit": args.pids_limit,
        "max_output_size": args.max_output,
        "network": args.net,
        "secrets": parse_pairs(args.secret, "--secret") or None,
    }


def parse_pairs(pairs: Sequence[str], flag: str) -> dict[str, str]:
    """``["A=1", "B=x=y"]`` → ``{"A": "1", "B": "x=y"}``."""
    result: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"{flag} expects KEY=VALUE, got {pair!r}.")
        result[name] = value
    return result


def stream_to_terminal(events: Iterable[StreamEvent], displays: list[MimeBundle] | None = None) -> int:
    """Copy stdout/stderr events to the terminal as they come; return the program's exit code.

    As in isol8, an error event prints ``[ERR] ...`` and sets exit code 1, and
    a non-zero exit event (137 after a timeout) sets its own. isol8's server
    ends a failed stream with an error event and no exit event; a stream that
    ends with neither was cut, which must not pass for success. A stateful
    cell's ``display`` events are appended to ``displays`` (when given).
    """
    exit_code = 0
    ended = False
    for event in events:
        if event.type == "stdout":
            _write(sys.stdout, event.text)
        elif event.type == "stderr":
            _write(sys.stderr, event.text)
        elif event.type == "display":
            if displays is not None and isinstance(event.data, dict):
                displays.append(event.data)
        elif event.type == "error":
            ended, exit_code = True, FAILURE
            print(f"[ERR] {event.text}", file=sys.stderr, flush=True)
        elif event.type == "exit":
            ended = True
            if event.exit_code != 0:
                exit_code = FAILURE if event.exit_code is None else event.exit_code
    if not ended:
        return fail("The stream ended before the program's exit code arrived.", FAILURE)
    return exit_code


def _write(stream: TextIO, data: str) -> None:
    # Flushed per event: the terminal (or a pipe) must see output while the program runs.
    stream.write(data)
    stream.flush()


def print_result(result: ExecutionResult) -> int:
    """``--no-stream``: print the whole output as isol8 does and return the exit code."""
    if result.stdout:
        print(result.stdout, flush=True)
    if result.stderr:
        print(result.stderr, file=sys.stderr, flush=True)
    if result.truncated:
        print("[WARN] Output was truncated", file=sys.stderr, flush=True)
    return result.exit_code


# -- stateful cells: value and outputs ---------------------------------------------

# The MIME types --save-outputs writes, in the order it writes a bundle's, with their extensions.
SAVED_MIME_TYPES = (("image/png", "png"), ("image/svg+xml", "svg"), ("text/html", "html"))


def final_result(client: RemoteIsol8) -> ExecutionResult | None:
    """The whole result of the run just streamed (the stream's ``exit`` has only the exit code).

    None, after a warning, when the server has no history route to ask.
    """
    if not client.last_execution_id:
        return None
    try:
        return client.get_execution(client.last_execution_id)
    except Isol8Error as exc:
        print(f"[WARN] Could not fetch the run's value and outputs: {exc}", file=sys.stderr, flush=True)
        return None


def report_cell(result: ExecutionResult | None, streamed: list[MimeBundle], save_dir: str | None) -> None:
    """After a cell's output: its value's ``text/plain`` on stdout, then (with a DIR) its files.

    The outputs are the result's; the ``display`` events seen on the stream
    stand in when the result has none (or could not be fetched).
    """
    value = result.value if result is not None else None
    plain = (value or {}).get("text/plain")
    if isinstance(plain, str):
        print(plain, flush=True)
    if save_dir is None:
        return
    outputs = output_bundles(result) if result is not None and result.outputs else streamed
    save_outputs([*outputs, value] if value is not None else outputs, Path(save_dir))


def output_bundles(result: ExecutionResult) -> list[MimeBundle]:
    """The MIME bundles of a result's ``outputs`` items (``{"type": "display", "data": {...}}``), in order."""
    return [item["data"] for item in result.outputs if isinstance(item.get("data"), dict)]


def save_outputs(bundles: Iterable[MimeBundle], directory: Path) -> list[Path]:
    """Write each bundle's PNG, SVG and HTML as ``output-<n>.<ext>`` (n from 1), naming each on stderr."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"Cannot create {directory}: {exc}") from exc
    written: list[Path] = []
    for bundle in bundles:
        for mime_type, extension in SAVED_MIME_TYPES:
            content = mime_bytes(mime_type, bundle.get(mime_type))
            if content is None:
                continue
            path = directory / f"output-{len(written) + 1}.{extension}"
            _write_file(path, content)
            print(path, file=sys.stderr, flush=True)
            written.append(path)
    return written


def mime_bytes(mime_type: str, content: object) -> bytes | None:
    """A bundle entry as file bytes: image/png is base64, the rest is text; None when absent or unusable."""
    if not isinstance(content, str):
        return None
    if mime_type != "image/png":
        return content.encode("utf-8")
    try:
        return base64.b64decode(content, validate=True)
    except ValueError:  # binascii.Error: not base64, so not an image either
        print(f"[WARN] Skipped an {mime_type} output that is not base64", file=sys.stderr, flush=True)
        return None


def _write_file(path: Path, content: bytes) -> None:
    try:
        path.write_bytes(content)
    except OSError as exc:
        raise UsageError(f"Cannot write {path}: {exc}") from exc


def finish_session(client: RemoteIsol8, *, keep: bool) -> None:
    """Close the client, deleting its session unless the user named it; never mask the run's result."""
    if keep or client.session_id is None:
        client.close()
        return
    try:
        client.stop()
    except Isol8Error as exc:
        print(f"[WARN] Could not delete session {client.session_id}: {exc}", file=sys.stderr)


# -- isol8 sessions / file ---------------------------------------------------------


def cmd_sessions_list(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    """``isol8 sessions list``: one line per session, or the JSON with --json."""
    client = connect(args, transport)
    try:
        sessions = client.list_sessions()
    finally:
        client.close()
    if args.json:
        print(json.dumps([_session_json(s) for s in sessions], indent=2))
    elif not sessions:
        print("No sessions.")
    else:
        print(f"{'ID':<40} {'ACTIVE':<7} {'RUNTIME':<8} {'STATE':<10} LAST ACCESSED")
        for s in sessions:
            print(f"{s.id:<40} {'yes' if s.is_active else 'no':<7} {s.runtime or '-':<8} "
                  f"{s.state or '-':<10} {s.last_accessed_at or '-'}")
    return 0


def _session_json(session: SessionInfo) -> dict[str, object]:
    return {
        "id": session.id, "isActive": session.is_active, "lastAccessedAt": session.last_accessed_at,
        "runtime": session.runtime, "createdAt": session.created_at, "state": session.state,
    }


def cmd_sessions_stop(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    """``isol8 sessions stop ID``: delete the session and its container."""
    client = connect(args, transport)
    try:
        client.delete_session(args.id)
    finally:
        client.close()
    print(f"Session {args.id} stopped.")
    return 0


def cmd_file_put(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    """``isol8 file put LOCAL REMOTE --session-id ID``."""
    try:
        content = Path(args.local).read_bytes()
    except OSError as exc:
        raise UsageError(f"Cannot read {args.local}: {exc}") from exc
    client = connect(args, transport, args.session_id)
    try:
        client.put_file(args.remote, content)
    finally:
        client.close()
    print(f"Uploaded {args.local} to {args.remote} in session {args.session_id} ({len(content)} bytes).")
    return 0


def cmd_file_get(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    """``isol8 file get REMOTE [LOCAL] --session-id ID``; LOCAL ``-`` writes to stdout."""
    client = connect(args, transport, args.session_id)
    try:
        content = client.get_file(args.remote)
    finally:
        client.close()
    local = args.local or Path(args.remote).name
    if local == "-":
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return 0
    try:
        Path(local).write_bytes(content)
    except OSError as exc:
        raise UsageError(f"Cannot write {local}: {exc}") from exc
    print(f"Downloaded {args.remote} from session {args.session_id} to {local} ({len(content)} bytes).")
    return 0


# -- isol8 mcp ---------------------------------------------------------------------


def cmd_mcp(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    """``isol8 mcp``: run the MCP server until its client goes away or Ctrl-C.

    ``transport`` (the tests' sync mock) is not used: the MCP server is async
    and its tests build it with an async transport of their own.
    """
    host, key = endpoint(args)
    # The MCP SDK is an optional extra, so it is imported only for this command:
    # `isol8 run` and the library must keep working where it is not installed.
    if importlib.util.find_spec("mcp") is None:
        raise UsageError("isol8 mcp needs the MCP Python SDK: pip install 'isol8-client[mcp]'")
    from isol8_client import mcp_server

    target = mcp_server.Isol8Target(host=host, api_key=key, retry=args.retry)
    return mcp_server.serve(target=target, transport=args.transport, bind=args.bind, port=args.port)


# -- isol8 serve -------------------------------------------------------------------


def serve(argv: Sequence[str]) -> int:
    """``isol8 serve ARGS``: become ``python manage.py serve ARGS`` of the project checkout.

    The server is the Django project, not this package, so it can only run
    from a checkout; exec (rather than a child process) lets Ctrl-C and
    SIGTERM reach the server directly.
    """
    root = find_project(Path.cwd())
    if root is None:
        return fail(
            "isol8 serve runs the server of an isol8 project checkout, and no manage.py was found in "
            f"{Path.cwd()} or its parents. Run it from the checkout (or use `python manage.py serve` there).",
            USAGE_ERROR,
        )
    python = project_python(root)
    sys.stdout.flush()
    os.execv(python, [python, str(root / "manage.py"), "serve", *argv])
    return 0  # not reached: execv replaces this process


def find_project(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` holding a manage.py."""
    for directory in (start, *start.parents):
        if (directory / "manage.py").is_file():
            return directory
    return None


def project_python(root: Path) -> str:
    """The checkout's own virtualenv if it has one: this CLI may be installed where Django is not."""
    for candidate in (root / ".venv" / "bin" / "python", root / ".venv" / "Scripts" / "python.exe"):
        if candidate.is_file():
            return str(candidate)
    return sys.executable


if __name__ == "__main__":
    sys.exit(main())
