"""Three real nodes: event streams read from a node that does not own the
conversation, across the death of that node, and across a Redis restart.

A conversation's events travel through Redis from its owner to every other
node; a reader reconnecting with ``Last-Event-ID`` continues where it was on
any node. Redis is an accelerator only: stopped under load, it costs live
events (the reader is told with ``gap=true``), never an acknowledged message.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import anyio
import pytest

from sessionvisor.testing import wait_until
from tests._support.servers import RedisServer

from ._nodes import (
    POLL,
    Client,
    EventReader,
    Node,
    Nodes,
    assistant_texts,
    explained,
    read_leases,
    read_store,
    text_of,
    user_ids,
    wait_all_answered,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


def owner_of(nodes: Nodes, pg_dsn: str, cid: str) -> Node:
    lease = read_leases(pg_dsn, cid)[cid]
    assert lease.live, f"nobody holds {cid}"
    return nodes[lease.node_id]


def replied(reader: EventReader, text: str) -> bool:
    """The reader received the reply quoting ``text``."""
    return any(f"“{text}”" in reply for reply in assistant_texts(reader.events))


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["seq"]) for e in events]


async def test_events_read_on_a_non_owner_arrive_in_order_and_continue_on_a_third_node(
    nodes: Nodes, pg_dsn: str
) -> None:
    cid = "sse-1"
    async with Client(nodes) as client:
        await client.send(cid, f"{cid} first", f"{cid}-m0")
        await wait_all_answered(pg_dsn, cid, client.sent, 20, nodes, others=False)
        owner = owner_of(nodes, pg_dsn, cid)
        reading, spare = nodes.others(owner)
        # Live from now on a node that does not own the conversation: a snapshot
        # with the last seq first, then every event.
        reader = EventReader(cid, lambda: reading if reading.running else spare)
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader.run)
            await wait_until(
                lambda: reader.events,
                timeout=10,
                interval=POLL,
                message=explained("the snapshot arrives", nodes.report),
            )
            for i in (1, 2):
                await client.send(cid, f"{cid} message {i}", f"{cid}-m{i}")
                await wait_until(
                    lambda t=f"{cid} message {i}": replied(reader, t),
                    timeout=20,
                    interval=POLL,
                    message=explained(
                        f"{reading.node_id}'s stream carries the reply to message {i}", nodes.report
                    ),
                )
            # A long reply (2 s or more of deltas), and the reading node dies in
            # the middle of it: the reader goes on from its Last-Event-ID elsewhere.
            long = f"{cid} long " + " ".join(f"word{n}" for n in range(400))
            await client.send(cid, long, f"{cid}-m3")
            seen = len(reader.events)
            await wait_until(
                lambda: len(reader.events) > seen + 20,
                timeout=20,
                interval=POLL,
                message="the long reply streams",
            )
            seen_on_a = len(reader.events)
            reading.kill()
            await wait_until(
                lambda: replied(reader, long),
                timeout=30,
                interval=POLL,
                message=explained(
                    f"{spare.node_id}'s stream carries the rest of the long reply", nodes.report
                ),
            )
            await client.send(cid, f"{cid} message 4", f"{cid}-m4")
            await wait_until(
                lambda: replied(reader, f"{cid} message 4"),
                timeout=20,
                interval=POLL,
                message=explained(
                    f"{spare.node_id}'s stream carries the reply to message 4", nodes.report
                ),
            )
            tg.cancel_scope.cancel()
        await wait_all_answered(pg_dsn, cid, client.sent, 20, nodes, others=False)

    got = seqs(reader.events)
    on_a = reader.connections[0]
    print(
        f"SSE on {reading.node_id} (owner {owner.node_id}): {seen_on_a} events, killed "
        f"mid-reply, then on {spare.node_id}: {len(got) - seen_on_a} more; connections "
        f"{[(c.node_id, c.last_event_id, c.ended) for c in reader.connections]}"
    )
    assert on_a.node_id == reading.node_id
    reconnects = [c for c in reader.connections[1:] if c.node_id == spare.node_id]
    assert reconnects, reader.connections
    reconnect = reconnects[0]
    snapshot = reader.events[0]
    assert snapshot["type"] == "StatusChanged" and not snapshot.get("gap")
    # Every event once, in order, across the reconnection, and nothing missed.
    resumed = [(e["type"], e["seq"], e.get("gap")) for e in reader.events[seen_on_a:][:3]]
    jumps = [(a, b) for a, b in pairwise(got) if b != a + 1]
    assert jumps == [], (
        f"seqs jump {jumps[:5]}; after Last-Event-ID {reconnect.last_event_id} on "
        f"{reconnect.node_id} the stream went on with {resumed}"
    )
    assert not any(e.get("gap") for e in reader.events), resumed
    # The stream tells the same story as the store (the first reply came before it).
    stored = read_store(pg_dsn, cid)[cid]
    assert user_ids(reader.events) == [m["id"] for m in stored.messages if m["role"] == "user"][1:]
    assert (
        assistant_texts(reader.events)
        == [text_of(m) for m in stored.messages if m["role"] == "assistant"][1:]
    )
    # The deltas of each turn add up to its reply.
    streamed, replies = "", []
    for event in reader.events:
        if event["type"] == "Delta":
            streamed += event["text"]
        elif event["type"] == "MessageAppended" and event["message"]["role"] == "assistant":
            replies.append(streamed)
            streamed = ""
    assert replies == assistant_texts(reader.events)


async def test_redis_stopped_and_started_under_load_loses_no_message_and_readers_recover(
    nodes: Nodes, pg_dsn: str, redis_server: RedisServer
) -> None:
    prefix = "redis-"
    watched = f"{prefix}watched"
    load = [f"{prefix}{i}" for i in range(30)]
    async with Client(nodes) as client:
        await client.send(watched, f"{watched} first", f"{watched}-m0")
        await wait_all_answered(pg_dsn, watched, client.sent, 20, nodes, others=False)
        owner = owner_of(nodes, pg_dsn, watched)
        reading = nodes.others(owner)[0]
        reader = EventReader(watched, lambda: reading)
        stop = anyio.Event()
        try:
            async with anyio.create_task_group() as readers:
                readers.start_soon(reader.run)
                async with anyio.create_task_group() as tg:
                    for cid in load:
                        tg.start_soon(lambda c=cid: client.keep_sending(c, stop, pace=0.2))
                    await client.send(watched, f"{watched} before", f"{watched}-m1")
                    await wait_until(
                        lambda: replied(reader, f"{watched} before"),
                        timeout=20,
                        interval=POLL,
                        message=explained("the reader gets events through Redis", nodes.report),
                    )

                    redis_server.stop()
                    outage_from = len(reader.events)
                    # Accepted while Redis is down (PostgreSQL is the authority), and answered.
                    await client.send(watched, f"{watched} during", f"{watched}-m2")
                    mine = {watched: client.sent[watched]}
                    await wait_all_answered(pg_dsn, watched, mine, 30, nodes, others=False)
                    redis_server.start()

                    await client.send(watched, f"{watched} after", f"{watched}-m3")
                    await wait_until(
                        lambda: replied(reader, f"{watched} after"),
                        timeout=30,
                        interval=POLL,
                        message=explained(
                            "the reader gets events again after Redis is back", nodes.report
                        ),
                    )
                    stop.set()  # the load ends with its last acknowledged send
                readers.cancel_scope.cancel()
        finally:
            if redis_server.process is None:  # the module's other tests need it
                redis_server.start()
        await wait_all_answered(pg_dsn, prefix, client.sent, 60, nodes)

    after = reader.events[outage_from:]
    print(
        f"Redis restart: the reader on {reading.node_id} (owner {owner.node_id}) got "
        f"{len(after)} events after the outage began; connections "
        f"{[(c.node_id, c.last_event_id, c.ended) for c in reader.connections]}; "
        f"{client.retries} retries of the load"
    )
    assert client.failed == []
    # Events produced while Redis was down may be lost to the stream (the owner
    # buffers them only until an append fails). The reader never misses any
    # silently: either the seqs it got run on without a hole, or a
    # StatusChanged carrying gap=true announced the hole.
    holes = [
        (a["seq"], b["seq"])
        for a, b in pairwise(after)
        if b["seq"] != a["seq"] + 1 and not (b["type"] == "StatusChanged" and b.get("gap"))
    ]
    assert holes == [], [(e["type"], e["seq"], e.get("gap")) for e in after]
    assert replied(reader, f"{watched} after")
