"""Three real nodes and a Redis restart: a reader that comes back inside the
events a dead owner never saved gets the new owner's renumbered events after a
gap, never the rest of them silently.

The owner of a conversation dies mid-reply (``kill -9``): the events it streamed
since its last save are gone with it, and so is everything the stream held when
Redis restarts empty. The node that takes the conversation over reruns the turn
and numbers its events from the stored seq again, below the seq the client had
reached. A node serving that client's ``Last-Event-ID`` reads the stream from
there knowing only the seq (``EventStreams.reader`` with no epoch); the test
reads it so itself, in its own process, so that it is never the node that takes
the conversation over. It must be told (``gap=True``) and get the whole rerun,
whose deltas add up to its reply.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from sessionvisor.cluster import EventStreams, ReadResult
from sessionvisor.testing import wait_until
from tests._support.servers import RedisServer

from ._nodes import (
    POLL,
    Client,
    EventReader,
    Nodes,
    explained,
    read_leases,
    text_of,
    wait_all_answered,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


async def test_a_reader_back_after_a_redis_restart_gets_the_new_owner_s_rerun_after_a_gap(
    nodes: Nodes, pg_dsn: str, redis_server: RedisServer
) -> None:
    cid = "renumbered-1"
    async with Client(nodes) as client:
        await client.send(cid, f"{cid} first", f"{cid}-m0")
        await wait_all_answered(pg_dsn, cid, client.sent, 20, nodes, others=False)
        owner = nodes[read_leases(pg_dsn, cid)[cid].node_id]
        reading = nodes.others(owner)[0]

        # A client reads on a node that does not own the conversation, during a long
        # reply, well into it (the rerun needs a while to number its events as far).
        reader = EventReader(cid, lambda: reading)
        long = f"{cid} long " + " ".join(f"word{n}" for n in range(300))
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader.run)
            await wait_until(lambda: reader.events, timeout=10, interval=POLL)
            await client.send(cid, long, f"{cid}-m1")
            await wait_until(
                lambda: len(reader.of_type("Delta")) > 200,
                timeout=20,
                interval=POLL,
                message=explained("the long reply streams", nodes.report),
            )
            tg.cancel_scope.cancel()
        position = reader.last_id
        assert position is not None

        # The owner dies mid-reply and Redis restarts empty; the client's position
        # is read from before another node takes the conversation over.
        owner.kill()
        redis_server.stop()
        redis_server.start()
        got: list[ReadResult] = []
        async with EventStreams(redis_server.url) as streams:
            stream = streams.reader(cid, after_seq=position)
            got.append(await stream.read())

            def replied() -> bool:
                return any(
                    long in _reply(json.loads(e.data)) for result in got for e in result.events
                )

            with anyio.fail_after(40):
                while not replied():
                    got.append(await stream.read(block_ms=1000))

    results = [result for result in got if result.events or result.gap]
    events = [json.loads(e.data) for result in results for e in result.events]
    seen = [(e["type"], e["seq"]) for e in events[:4]]
    assert results[0].gap, f"no gap after {position}: {seen}"
    assert not any(result.gap for result in results[1:])
    # Every event of the rerun, numbered from below the client's position on.
    assert events[0]["seq"] <= position, seen
    assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[-1]["seq"] + 1))
    reply = next(_reply(e) for e in events if long in _reply(e))
    assert "".join(e["text"] for e in events if e["type"] == "Delta") == reply


def _reply(event: dict[str, Any]) -> str:
    message = event.get("message")
    if event["type"] != "MessageAppended" or message["role"] != "assistant":
        return ""
    return text_of(message)
