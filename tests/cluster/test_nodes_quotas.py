"""``--max-running-per-owner`` across real node processes: three demo nodes share the
limit through Redis, so one owner's turns never run at once on two nodes.

Each conversation is sent to a different node at the same moment. What a user
sees proves the limit: on each conversation's event stream a turn begins with
its user message appended (after the turn took its slot) and ends with the
reply appended (before it gave the slot back), so with a limit of 1 those
intervals, stamped by the nodes' shared wall clock, never overlap.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from sessionvisor.testing import free_port, wait_until
from tests._support.servers import RedisServer

from ._nodes import HEADERS, POLL, EventReader, Node, Nodes, explained, node_argv, postgres_url

pytestmark = pytest.mark.anyio

CONVERSATIONS = ("q-1", "q-2", "q-3")


def _appended(events: list[dict[str, Any]], role: str) -> list[datetime]:
    return [
        datetime.fromisoformat(e["at"])
        for e in events
        if e.get("type") == "MessageAppended" and e["message"]["role"] == role
    ]


async def test_one_owners_turns_run_one_at_a_time_across_three_nodes(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    store_url = postgres_url(pg_dsn)
    made = []
    for i in range(1, 4):
        port = free_port()
        argv = node_argv(f"n{i}", port, store_url, redis_server.url, word_delay=0.02)
        made.append(Node(f"n{i}", [*argv, "--max-running-per-owner", "1"], port, tmp_path))
    nodes = Nodes(made)
    try:
        await nodes.start()
        async with httpx.AsyncClient(headers=HEADERS, timeout=30) as http:

            async def send(node: Node, cid: str) -> None:
                answer = await http.post(
                    f"{node.url}/conversations/{cid}/messages",
                    json={"content": f"hello from {cid}, a few words to stream"},
                )
                assert answer.status_code == 202, answer.text

            async with anyio.create_task_group() as tg:
                for node, cid in zip(made, CONVERSATIONS, strict=True):
                    tg.start_soon(send, node, cid)

            readers = {cid: EventReader(cid, lambda: made[0], after=0) for cid in CONVERSATIONS}
            async with anyio.create_task_group() as tg:
                for reader in readers.values():
                    tg.start_soon(reader.run)

                def answered() -> bool:
                    return all(_appended(r.events, "assistant") for r in readers.values())

                await wait_until(
                    answered,
                    timeout=60,
                    interval=POLL,
                    message=explained("every conversation answered", nodes.report),
                )
                tg.cancel_scope.cancel()

        turns = sorted(
            (_appended(r.events, "user")[0], _appended(r.events, "assistant")[0], cid)
            for cid, r in readers.items()
        )
        for (_, ended, first), (began, _, second) in itertools.pairwise(turns):
            assert ended <= began, f"{first} and {second} ran at once: {turns}"
        waited = sum("turn_waits_for_owner_slot" in node.log_text() for node in made)
        assert waited >= 1, nodes.report()
    finally:
        nodes.close()
        print(nodes.report(80))
