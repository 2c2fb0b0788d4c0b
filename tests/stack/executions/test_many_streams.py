"""One web process holds 500 simultaneous SSE streams (issue 3's capacity figure)."""

from __future__ import annotations

import asyncio
import json
import subprocess

import httpx
import pytest

from isol8_site.web import uvicorn_argv
from tests.conftest import ROOT, free_port, wait_healthy

pytestmark = pytest.mark.stack

STREAMS = 500


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def follow(client: httpx.AsyncClient, path: str, opened: asyncio.Event, counter: list[int]) -> list[dict]:
    events = []
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        counter[0] += 1
        if counter[0] == STREAMS:
            opened.set()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def test_one_web_process_holds_500_streams(api, stack, api_key, capsys):
    # One uvicorn process of its own (the stack's web runs several), on the same stack.
    port = free_port()
    log = open(stack.log_dir / "web-500-streams.log", "ab")  # noqa: SIM115 - lives with the process
    web = subprocess.Popen(
        uvicorn_argv(port=port),
        cwd=ROOT, env={**stack.env, "ISOL8_TENANT_MAX_STREAMS": "1000"}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=30)
        held(api, stack, api_key, capsys, web.pid, f"http://127.0.0.1:{port}")
    finally:
        web.terminate()
        web.wait()


def held(api, stack, api_key, capsys, web_pid, url):
    body = {"request": {"runtime": "bash", "code": "sleep 8; echo done", "timeoutMs": 60000}}
    with api.stream("POST", "/execute/stream", json=body) as response:
        execution_id = response.headers["X-Execution-Id"]
    before = rss_kib(web_pid)

    async def main() -> tuple[list[list[dict]], int]:
        limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=0)
        headers = {"Authorization": f"Bearer {api_key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as client:
            opened = asyncio.Event()
            counter = [0]
            tasks = [asyncio.create_task(follow(client, f"/executions/{execution_id}/events", opened, counter))
                     for _ in range(STREAMS)]
            await asyncio.wait_for(opened.wait(), 60)
            during = rss_kib(web_pid)
            return await asyncio.gather(*tasks), during

    results, during = asyncio.run(main())
    assert len(results) == STREAMS
    for events in results:
        assert events[-2:] == [{"type": "stdout", "data": "done\n", "phase": "code"},
                               {"type": "exit", "data": "0", "phase": "code"}]
    per_stream = (during - before) / STREAMS
    with capsys.disabled():
        print(f"\n{STREAMS} streams open in one web process: RSS {before} KiB -> {during} KiB, "
              f"~{per_stream:.1f} KiB per stream")
