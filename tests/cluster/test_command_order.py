"""One order for every command of a conversation, whichever node took it.

A command acknowledged by a node that does not own the conversation is a row in
the inbox; the owner is woken for it (Redis, NOTIFY) but may not have applied it
yet when the next command reaches the owner directly. These tests store such a
row the way a poster does, without the wake-up (the window between the
poster's commit and the owner's wake, made as long as the test needs), and
then send a command straight to the owner: the row must take effect first.

Also here: the shared inbox probe answers every caller after at most two
queries, however many callers keep arriving.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import pytest

from sessionvisor import AccessDenied, SessionSupervisor, SingleRouter, Status
from sessionvisor.testing import ScriptedAgent, wait_until
from tests._support.servers import RedisServer
from tests._support.sql import sql

from ._inprocess import in_process_nodes

pytestmark = pytest.mark.anyio


def _two_nodes(
    dsn: str,
    redis: RedisServer,
    agents: list[ScriptedAgent],
    owner_of: Callable[[Any], str | None] | None = None,
) -> Any:
    def make(agent_id: str, config: Any) -> ScriptedAgent:
        agents.append(ScriptedAgent())
        return agents[-1]

    return in_process_nodes(
        dsn, redis, "a", "b", router=lambda name: SingleRouter(make), owner_of=owner_of
    )


def _posted_unheard(dsn: str, cid: str, text: str, message_id: str, owner: str = "u") -> None:
    """A send row as another node stores it, before its owner hears of it."""
    payload = json.dumps({"content": text, "owner": owner})
    sql(
        dsn,
        "INSERT INTO sessionvisor_inbox (conversation_id, command_id, kind, payload) "
        "VALUES (%s, %s, 'send', %s)",
        cid,
        message_id,
        payload,
    )


async def _status(node: SessionSupervisor, cid: str, status: Status) -> None:
    await wait_until(
        lambda: (h := node.get(cid, scope="u")) is not None and h.status is status,
        timeout=15,
        interval=0.02,
        message=f"{cid} {status.value}",
    )


async def test_a_message_stored_elsewhere_goes_before_a_later_answer_to_the_owner(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    agents: list[ScriptedAgent] = []
    async with _two_nodes(pg_dsn, redis_server, agents) as (a, _b):
        cid = "ord-" + uuid.uuid4().hex[:8]
        await a.send(cid, "please interrupt", scope="u")
        await _status(a, cid, Status.INTERRUPTED)
        _posted_unheard(pg_dsn, cid, "and one more thing", "m-first")
        # The message was acknowledged first, so it takes effect first: it joins the
        # conversation before the answer, which the agent then gets.
        assert await a.resume(cid, "yes", scope="u") is Status.RUNNING
        await _status(a, cid, Status.IDLE)
        state = await a.load(cid, scope="u")
        assert state is not None
        assert [(m.role, m.content) for m in state.messages] == [
            ("user", "please interrupt"),
            ("user", "and one more thing"),
            ("tool", "answer: yes"),
            ("assistant", "resumed with yes"),
        ]
        assert [answer for agent in agents for answer in agent.answers] == ["yes"]


async def test_a_message_stored_elsewhere_goes_before_a_later_cancel_to_the_owner(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    agents: list[ScriptedAgent] = []
    async with _two_nodes(pg_dsn, redis_server, agents) as (a, _b):
        cid = "ord-" + uuid.uuid4().hex[:8]
        await a.send(cid, "slow one", scope="u")
        await _status(a, cid, Status.RUNNING)
        _posted_unheard(pg_dsn, cid, "queued before the cancel", "m-first")
        # The cancel came after the message: the message is queued first, and the
        # cancel holds it (a message applied after the cancel would start a turn).
        assert await a.cancel(cid, scope="u") is Status.CANCELLED
        handle = a.get(cid, scope="u")
        assert handle is not None
        state = await a.load(cid, scope="u")
        assert state is not None
        assert [(m.role, m.content) for m in state.messages] == [("user", "slow one")]
        assert [m.content for m in state.queued] == ["queued before the cancel"]
        assert handle.status is Status.CANCELLED


async def test_a_message_stored_for_a_conversation_never_saved_creates_it_for_its_owner(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    # The poster found an owner that died before its first save: the row is all
    # there is. The node that takes it creates the conversation for the row's
    # owner key and wakes it with no scope (the router and the agent never get an
    # owner key in place of a scope).
    def owner_of(scope: Any) -> str | None:
        return None if scope is None else str(scope["user"])

    agents: list[ScriptedAgent] = []
    seen: list[Any] = []

    async with _two_nodes(pg_dsn, redis_server, agents, owner_of=owner_of) as (a, b):
        cid = "ord-" + uuid.uuid4().hex[:8]
        _posted_unheard(pg_dsn, cid, "hello from before", "m-orphan", owner="alice")
        alice = {"user": "alice"}

        async def answered() -> bool:
            state = await a.load(cid, scope=alice)
            return state is not None and any(m.role == "assistant" for m in state.messages)

        # The sweeper of either node claims it (a conversation with stored commands).
        await wait_until(answered, timeout=30, interval=0.05, message=f"{cid} answered")
        state = await a.load(cid, scope=alice)
        assert state is not None
        assert [(m.role, m.content) for m in state.messages] == [
            ("user", "hello from before"),
            ("assistant", "echo: hello from before"),
        ]
        for node in (a, b):
            with pytest.raises(AccessDenied):
                await node.load(cid, scope={"user": "mallory"})
        seen.extend(agent.turns for agent in agents)
    assert seen == [["hello from before"]]


async def test_a_burst_of_posts_wakes_the_owner_with_one_task_per_conversation(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    # Each command posted for another node's conversation wakes that node (Redis;
    # failing that, the poster serves it itself). A burst must not start a wake per
    # post: while one runs for a conversation, later posts count on their NOTIFY.
    agents: list[ScriptedAgent] = []
    async with _two_nodes(pg_dsn, redis_server, agents) as (a, b):
        cid = "ord-" + uuid.uuid4().hex[:8]
        await a.send(cid, "first", scope="u")
        mailbox: Any = b._mailbox
        running: list[str] = []
        most = 0
        gate = anyio.Event()
        original = mailbox._wake_owner

        async def held_wake(node_id: str, conversation_id: str) -> None:
            nonlocal most
            running.append(conversation_id)
            most = max(most, len(running))
            await gate.wait()
            running.remove(conversation_id)
            await original(node_id, conversation_id)

        mailbox._wake_owner = held_wake
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(partial(b.send, cid, f"burst {i}", scope="u", message_id=f"m{i}"))
        assert most == 1 and running == [cid]
        gate.set()

        async def all_answered() -> bool:
            state = await a.load(cid, scope="u")
            users = [m for m in state.messages if m.role == "user"] if state else []
            return len(users) == 41 and state is not None and not state.queued

        await wait_until(all_answered, timeout=30, interval=0.05, message="the burst answered")


async def test_the_inbox_probe_answers_each_caller_within_two_queries() -> None:
    from sessionvisor.cluster._serving import _Probe

    class SlowInbox:
        """Each query waits for the test to let it go."""

        def __init__(self) -> None:
            self.queries: list[set[str]] = []
            self.gates: list[anyio.Event] = []
            self.closed = False

        async def pending_among(self, ids: set[str]) -> set[str]:
            self.queries.append(set(ids))
            gate = anyio.Event()
            self.gates.append(gate)
            if not self.closed:
                await gate.wait()
            return {cid for cid in ids if cid.endswith("!")}

        def close(self) -> None:
            """Let every query go (the probe shields its queries from cancellation)."""
            self.closed = True
            for gate in self.gates:
                gate.set()

    inbox = SlowInbox()
    probe = _Probe(inbox)  # type: ignore[arg-type]
    answered: dict[str, bool] = {}

    async def ask(cid: str) -> None:
        answered[cid] = await probe.pending(cid)

    async with anyio.create_task_group() as tg:
        try:
            await _ask_in_rounds(tg, ask, inbox, probe, answered)
        finally:
            inbox.close()
    assert answered == {"first!": True} | {
        cid: cid.endswith("!") for r in range(1, 6) for cid in (f"c{r}!", f"d{r}")
    }


async def _ask_in_rounds(
    tg: Any, ask: Any, inbox: Any, probe: Any, answered: dict[str, bool]
) -> None:
    """Callers keep arriving while each query runs; the callers of a query are
    answered when it returns, not after the queries of later arrivals."""

    def waiting(cids: list[str]) -> bool:
        batch = probe._open
        return batch is not None and set(cids) <= batch.ids

    def answered_all(cids: list[str]) -> bool:
        return all(c in answered for c in cids)

    tg.start_soon(ask, "first!")
    await wait_until(lambda: len(inbox.queries) == 1, timeout=5, interval=0.001)
    batch = ["first!"]
    for round_ in range(1, 6):
        later = [f"c{round_}!", f"d{round_}"]
        for cid in later:
            tg.start_soon(ask, cid)
        await wait_until(partial(waiting, later), timeout=5, interval=0.001)
        inbox.gates[round_ - 1].set()
        await wait_until(
            partial(answered_all, batch),
            timeout=5,
            interval=0.001,
            message=f"{batch} answered once their query returned",
        )
        queries = round_ + 1
        await wait_until(lambda q=queries: len(inbox.queries) == q, timeout=5, interval=0.001)
        assert inbox.queries[round_] == set(later)
        batch = later
    inbox.gates[-1].set()
