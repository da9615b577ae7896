"""Epochs across owners (two supervisors in one process, one redis-server).

A node that lost a conversation and took it back holds a newer epoch; what it
still had to send from its earlier ownership is refused by Redis and must not
stop the newer session. A node whose subscribers followed an owner that never
saved its last events numbers on from the store when it takes over, and tells
its subscribers of the gap.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest

from sessionvisor import SessionSupervisor, SingleRouter
from sessionvisor.agents import Done, Turn
from sessionvisor.sessions import Delta, Event, MessageAppended, StatusChanged
from sessionvisor.testing import ScriptedAgent, wait_until
from tests._support.servers import RedisServer
from tests._support.sql import sql

from ._inprocess import in_process_nodes

pytestmark = pytest.mark.anyio


def _nodes(dsn: str, redis: RedisServer, *names: str, agent: Any = None) -> Any:
    def router(name: str) -> SingleRouter:
        return SingleRouter(
            lambda agent_id, config: agent(name) if agent else ScriptedAgent(stream=True)
        )

    return in_process_nodes(dsn, redis, *names, router=router)


def _lease(dsn: str, cid: str) -> tuple[str, int, bool]:
    rows = sql(
        dsn,
        "SELECT node_id, epoch, lease_until > now() FROM sessionvisor_leases "
        "WHERE conversation_id = %s",
        cid,
    )
    return rows[0] if rows else ("", 0, False)


async def _replies(node: SessionSupervisor, cid: str, count: int) -> list[str]:
    async def done() -> bool:
        state = await node.load(cid, scope="u")
        return state is not None and sum(m.role == "assistant" for m in state.messages) >= count

    await wait_until(done, timeout=15, interval=0.02, message=f"{count} replies in {cid}")
    state = await node.load(cid, scope="u")
    assert state is not None
    return [str(m.content) for m in state.messages if m.role == "assistant"]


async def _released(dsn: str, cid: str) -> None:
    await wait_until(
        lambda: not _lease(dsn, cid)[2], timeout=10, interval=0.02, message="lease released"
    )


async def test_events_of_an_earlier_ownership_refused_later_leave_the_newer_session_alone(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    async with _nodes(pg_dsn, redis_server, "x", "y") as (x, y):
        cid = "c-" + uuid.uuid4().hex[:10]
        await x.send(cid, "one", scope="u")
        await _replies(x, cid, 1)
        first_epoch = _lease(pg_dsn, cid)[1]

        # x's way to Redis stalls: the events of its next turn wait in its outbox.
        streams = x._runtime.bus._streams
        through = streams.append_many
        gate = anyio.Event()
        held = anyio.Event()

        async def stalled(events: list[tuple[str, int, int, str]]) -> list[bool]:
            held.set()
            await gate.wait()
            return await through(events)

        streams.append_many = stalled
        await x.send(cid, "two", scope="u")
        await _replies(x, cid, 2)
        with anyio.fail_after(10):
            await held.wait()

        # x lets the conversation go, y serves it, lets it go, and x takes it back.
        assert await x.stop(cid, scope="u") == "stopped"
        await _released(pg_dsn, cid)
        assert (await y.send(cid, "three", scope="u")).started
        await _replies(y, cid, 3)
        assert await y.stop(cid, scope="u") == "stopped"
        await _released(pg_dsn, cid)
        assert (await x.send(cid, "four", scope="u")).started
        await _replies(x, cid, 4)
        node, epoch, live = _lease(pg_dsn, cid)
        assert (node, live) == ("x", True) and epoch >= first_epoch + 2

        # Redis now refuses what x still held of its first ownership.
        gate.set()
        await x._runtime.bus.flush(10.0)
        assert not x._runtime.bus._outbox

        # The newer session was not stopped, nor its lease dropped.
        assert x.get(cid, scope="u") is not None
        assert x.metrics().cluster.leases_lost == 0
        assert _lease(pg_dsn, cid) == ("x", epoch, True)
        delivery = await x.send(cid, "five", scope="u")
        assert not delivery.started and not delivery.queued
        assert (await _replies(x, cid, 5))[-1] == "echo: five"
        # ... and the lease is given up as usual when the session ends.
        assert await x.stop(cid, scope="u") == "stopped"
        await _released(pg_dsn, cid)
        assert _lease(pg_dsn, cid)[:2] == ("x", epoch)


class _HalfReply(ScriptedAgent):
    """Streams five words, then, on a node whose ``gate`` is closed, waits before
    it replies (its turn is cut there, its deltas never saved)."""

    def __init__(self, gate: anyio.Event) -> None:
        super().__init__()
        self.gate = gate

    async def run(self, turn: Turn) -> Done:
        for i in range(5):
            turn.delta(f"w{i} ")
            await anyio.lowlevel.checkpoint()
        await self.gate.wait()
        return Done(turn.state, reply="w0 w1 w2 w3 w4 done")


async def test_a_node_that_takes_over_tells_its_subscribers_of_the_old_owner_s_unsaved_events(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    gates = {"x": anyio.Event(), "z": anyio.Event()}
    gates["z"].set()  # x's turn hangs in the middle; z's rerun runs through
    async with _nodes(pg_dsn, redis_server, "x", "z", agent=lambda n: _HalfReply(gates[n])) as (
        x,
        z,
    ):
        cid = "c-" + uuid.uuid4().hex[:10]
        await x.start(cid, scope="u")
        seen: list[Event] = []
        try:
            async with z.subscribe(cid, scope="u") as sub:
                await x.send(cid, "hello", scope="u")
                with anyio.fail_after(15):
                    async for event in sub:
                        seen.append(event)
                        if sum(isinstance(e, Delta) for e in seen) == 5:
                            break
                cut_at = seen[-1].seq
                # x is gone as far as the cluster knows (its lease handed to a node that
                # died): z takes the conversation with the next message, and reruns the
                # turn x never finished, numbering from what x stored.
                sql(
                    pg_dsn,
                    "UPDATE sessionvisor_leases SET node_id = 'gone', "
                    "lease_until = now() - interval '1 second' WHERE conversation_id = %s",
                    cid,
                )
                assert (await z.send(cid, "again", scope="u")).started
                after: list[Event] = []
                with anyio.fail_after(15):
                    async for event in sub:
                        after.append(event)
                        if isinstance(event, MessageAppended) and "again" in str(
                            event.message.content
                        ):
                            break
        finally:
            gates["x"].set()

    gaps = [i for i, e in enumerate(after) if isinstance(e, StatusChanged) and e.gap]
    shown = [(type(e).__name__, e.seq) for e in after[:4]]
    assert gaps == [0], f"after seq {cut_at}: {shown}"
    rerun = after[1:]
    assert rerun[0].seq <= cut_at, shown
    assert [e.seq for e in rerun] == list(range(after[0].seq + 1, after[0].seq + 1 + len(rerun)))
    # The rerun's deltas, every one of them, after the gap.
    first_reply = next(
        e for e in rerun if isinstance(e, MessageAppended) and e.message.role == "assistant"
    )
    deltas = "".join(e.text for e in rerun[: rerun.index(first_reply)] if isinstance(e, Delta))
    assert deltas == "w0 w1 w2 w3 w4 "
