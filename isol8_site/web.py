"""How the web tier is started: uvicorn with the service's ASGI app and bounded request heads.

``serve``, the test stack and the benchmarks all start it from here, so they
run the same server; the compose file spells out the same options.
"""

from __future__ import annotations

import sys

HTTP_PROTOCOL = "isol8_site.http:BoundedHttpToolsProtocol"
# A WebSocket frame is at most this large (an execute message with its files,
# or 64 KiB of stdin), and at most this many wait unread per connection: a
# client that floods a socket is held back by TCP, not buffered (executions/ws.py).
WS_MAX_SIZE = 16 * 1024 * 1024
WS_MAX_QUEUE = 8


def uvicorn_argv(*, host: str = "127.0.0.1", port: int, workers: int = 1) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "isol8_site.asgi:application",
        "--host", host, "--port", str(port), "--workers", str(workers),
        "--http", HTTP_PROTOCOL,
        "--no-access-log",
        "--timeout-graceful-shutdown", "5",
        "--timeout-keep-alive", "5",
        "--ws-max-size", str(WS_MAX_SIZE),
        "--ws-max-queue", str(WS_MAX_QUEUE),
    ]
