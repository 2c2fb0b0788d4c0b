#!/usr/bin/python3 -I
"""The isol8 egress proxy: the only way out for package installs.

Installer containers sit on an internal Docker network with no route anywhere;
this proxy is on that network and on the normal bridge. It accepts only HTTPS
``CONNECT host:443`` to the hosts in ISOL8_EGRESS_ALLOW (the package registries)
and refuses everything else, so an install (and any script a package runs while
installing) can reach the registries and nothing more. User code never runs on
that network: its sandbox has no network at all.

Standard library only; it runs as nobody in a hardened container.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

ALLOW = {h.strip().lower() for h in os.environ.get("ISOL8_EGRESS_ALLOW", "").split(",") if h.strip()}
PORT = int(os.environ.get("ISOL8_EGRESS_PORT", "3128"))
IDLE_SECONDS = 120.0
MAX_HEADER_LINES = 64


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}", flush=True)


async def refuse(writer: asyncio.StreamWriter, status: str) -> None:
    writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    writer.close()


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), IDLE_SECONDS)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (TimeoutError, OSError):
        pass
    finally:
        writer.close()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    try:
        request = (await asyncio.wait_for(reader.readline(), 10)).decode("latin-1").strip()
        for _ in range(MAX_HEADER_LINES):
            if (await asyncio.wait_for(reader.readline(), 10)) in (b"\r\n", b"\n", b""):
                break
        method, target, _version = request.split(" ", 2)
    except (TimeoutError, ValueError, OSError):
        writer.close()
        return
    host, _, port = target.rpartition(":")
    host = host.strip("[]").lower()
    if method != "CONNECT" or port != "443" or host not in ALLOW:
        log(f"DENY {peer[0] if peer else '?'} {method} {target}")
        await refuse(writer, "403 Forbidden")
        return
    try:
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, 443), 15)
    except (TimeoutError, OSError) as exc:
        log(f"FAIL {target}: {exc}")
        await refuse(writer, "502 Bad Gateway")
        return
    log(f"ALLOW {peer[0] if peer else '?'} {target}")
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()
    await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


async def main() -> None:
    server = await asyncio.start_server(handle, "0.0.0.0", PORT)
    log(f"isol8 egress proxy on :{PORT}, allowing {', '.join(sorted(ALLOW)) or 'nothing'}")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
