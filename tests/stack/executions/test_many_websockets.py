"""One web process holds 300 simultaneous WebSocket runs (issue 14), through the `websockets` client library."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest
from websockets.asyncio.client import connect

from isol8_site.web import uvicorn_argv
from tests.conftest import ROOT, free_port, make_key, one_mode, wait_healthy
from tests.stack.executions.test_many_streams import rss_kib

pytestmark = [pytest.mark.stack, one_mode]

SOCKETS = 300


@pytest.fixture
def unlimited_key(transactional_db: Any) -> str:
    from tenants.services import tenant_create

    tenant = tenant_create(slug="ws-many", name="many sockets")
    tenant.max_concurrent = None
    tenant.max_per_minute = None
    tenant.save()
    return make_key(tenant)


@pytest.fixture
def one_web(stack):
    port = free_port()
    log = open(stack.log_dir / "web-300-websockets.log", "ab")  # noqa: SIM115 - lives with the process
    # 300 runs at once wait for the cluster's run slots: the queue may hold them all.
    env = {**stack.env, "ISOL8_TENANT_MAX_STREAMS": "1000", "ISOL8_QUEUE_TIMEOUT": "120",
           "ISOL8_MAX_QUEUE_DEPTH": "1000"}
    web = subprocess.Popen(uvicorn_argv(port=port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=30)
        yield f"ws://127.0.0.1:{port}/execute/ws", web.pid
    finally:
        web.terminate()
        web.wait()


async def one_run(url: str, key: str, n: int, opened: asyncio.Barrier) -> list[dict[str, Any]]:
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=60,
                       max_queue=None) as ws:
        await opened.wait()  # every socket is open before any run starts
        await ws.send(json.dumps({"type": "execute", "request": {"runtime": "python", "code": f"print({n})"}}))
        events = []
        async for message in ws:
            events.append(json.loads(message))
        return events


def test_one_web_process_completes_300_simultaneous_websocket_runs(one_web, unlimited_key, capsys):
    url, pid = one_web
    before = rss_kib(pid)

    async def main() -> tuple[list[list[dict[str, Any]]], int]:
        opened = asyncio.Barrier(SOCKETS + 1)
        tasks = [asyncio.create_task(one_run(url, unlimited_key, n, opened)) for n in range(SOCKETS)]
        await asyncio.wait_for(opened.wait(), 60)
        await asyncio.sleep(0.5)
        during = rss_kib(pid)
        return await asyncio.wait_for(asyncio.gather(*tasks), 240), during

    results, during = asyncio.run(main())
    assert len(results) == SOCKETS
    for n, events in enumerate(results):
        stdout = "".join(e["data"] for e in events if e["type"] == "stdout")
        assert stdout == f"{n}\n" and events[-1] == {"type": "exit", "data": "0", "phase": "code"}, (n, events)
        assert {e["type"] for e in events} == {"stdout", "exit"}, (n, events)
    with capsys.disabled():
        print(f"\n{SOCKETS} WebSocket connections open in one web process: RSS {before} KiB -> {during} KiB, "
              f"~{(during - before) / SOCKETS:.1f} KiB per connection")
