"""How a finished run's stream ends when Redis has no more events for it (below the stack)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from executions.events import _ending, channel_for


class FakeRedis:
    """Just the two list reads _ending makes."""

    def __init__(self, records: list[str]) -> None:
        self.records = records

    async def llen(self, key: str) -> int:
        return len(self.records)

    async def lindex(self, key: str, index: int) -> bytes | None:
        return self.records[index].encode() if self.records else None


ROW = SimpleNamespace(pk="e1", stdout="hi\n", stderr="", status="ok", timed_out=False, error="", exit_code=0)
STDOUT = 'stdout\n{"type":"stdout","data":"hi\\n","phase":"code"}'
EXIT = 'exit\n{"type":"exit","data":"0","phase":"code"}'


def ending(records: list[str], last_id: int) -> list[dict] | None:
    texts = asyncio.run(_ending(FakeRedis(records), channel_for("e1"), ROW, last_id))  # type: ignore[arg-type]
    if texts is None:
        return None
    return [json.loads(line[6:]) for text in texts for line in text.splitlines() if line.startswith("data: ")]


def test_events_that_arrived_meanwhile_are_read_not_skipped():
    # The run finished while the stream looked at its row: its events are in Redis now.
    assert ending([STDOUT, EXIT], 0) is None
    assert ending([STDOUT, EXIT], 1) is None


def test_a_client_at_or_past_the_end_gets_nothing_more():
    assert ending([STDOUT, EXIT], 2) == []
    assert ending([STDOUT, EXIT], 1_000_000) == []


def test_a_list_that_lost_its_end_is_ended_from_the_history():
    assert ending([STDOUT], 1) == [{"type": "exit", "data": "0", "phase": "code"}]


def test_a_list_that_is_gone_is_replayed_or_ended_from_the_history():
    assert [e["type"] for e in ending([], 0)] == ["stdout", "exit"]
    part_way = ending([], 3)
    assert [e["type"] for e in part_way] == ["error", "exit"]
    assert "no longer available" in part_way[0]["data"]
