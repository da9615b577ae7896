"""``regenerate`` and ``edit`` through a node that does not serve the conversation.

The node that takes the call checks it against the stored conversation, makes
the id of the message asked again and stores the command in the inbox; the
owner applies it in order with the other commands (a turn started meanwhile is
waited for) and gives the new message that id. Several nodes in one process
(``_inprocess``); a row "posted unheard" is a command another node stored
before its owner heard of it, as in ``test_command_order.py``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
import pytest

from sessionvisor import (
    AccessDenied,
    InvalidStatus,
    SessionSupervisor,
    SingleRouter,
    Status,
    UnknownMessage,
)
from sessionvisor.testing import ScriptedAgent, wait_until
from tests._support.servers import RedisServer
from tests._support.sql import sql

from ._inprocess import in_process_nodes

pytestmark = pytest.mark.anyio

U = "u"  # the scope (and owner key) of every call


def _nodes(dsn: str, redis: RedisServer, agents: list[ScriptedAgent]) -> Any:
    def make(agent_id: str, config: Any) -> ScriptedAgent:
        agents.append(ScriptedAgent())
        return agents[-1]

    return in_process_nodes(dsn, redis, "a", "b", router=lambda name: SingleRouter(make))


def _post_unheard(dsn: str, cid: str, kind: str, command_id: str, payload: dict[str, Any]) -> None:
    sql(
        dsn,
        "INSERT INTO sessionvisor_inbox (conversation_id, command_id, kind, payload) "
        "VALUES (%s, %s, %s, %s)",
        cid,
        command_id,
        kind,
        json.dumps({**payload, "owner": U}),
    )


def _inbox(dsn: str, cid: str) -> list[tuple[Any, ...]]:
    return sql(
        dsn,
        "SELECT kind, command_id FROM sessionvisor_inbox WHERE conversation_id = %s ORDER BY seq",
        cid,
    )


def _shown(state: Any) -> list[tuple[str, str]]:
    return [(m.role, m.text()) for m in state.messages]


async def _settled(
    node: SessionSupervisor, cid: str, replies: int, asked: str | None = None
) -> Any:
    """Wait until the conversation shows ``replies`` answers, the last one last, and
    (when given) the message ``asked``."""

    async def done() -> bool:
        state = await node.load(cid, scope=U)
        if state is None or state.queued:
            return False
        if asked is not None and all(m.id != asked for m in state.messages):
            return False
        shown = [m for m in state.messages if m.role == "assistant"]
        return len(shown) == replies and state.messages[-1].role == "assistant"

    await wait_until(done, timeout=30, interval=0.02, message=f"{cid}: {replies} replies")
    state = await node.load(cid, scope=U)
    assert state is not None
    return state


async def _started_on_a(a: SessionSupervisor, cid: str) -> Any:
    await a.send(cid, "hello", scope=U)
    state = await _settled(a, cid, 1)
    assert a.get(cid, scope=U) is not None  # a serves it
    return state


async def test_a_regenerate_and_an_edit_through_another_node_are_answered_by_the_owner(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    agents: list[ScriptedAgent] = []
    async with _nodes(pg_dsn, redis_server, agents) as (a, b):
        cid = "rw-" + uuid.uuid4().hex[:8]
        first = await _started_on_a(a, cid)
        hello, reply = first.messages

        asked = await b.regenerate(cid, scope=U)
        assert b.get(cid, scope=U) is None  # b stored the command; a applied it
        state = await _settled(a, cid, 1, asked)
        assert _shown(state) == [("user", "hello"), ("assistant", "echo: hello")]
        again = state.messages[0]
        assert again.id == asked != hello.id
        assert again.metadata["regenerates"] == hello.id
        assert state.messages[1].id != reply.id

        edited = await b.edit(cid, hello.id, "changed", scope=U)  # the old id names `asked`
        state = await _settled(b, cid, 1, edited)
        assert _shown(state) == [("user", "changed"), ("assistant", "echo: changed")]
        assert state.messages[0].id == edited
        assert state.messages[0].metadata["edits"] == asked

        stored = await a.store.load(cid)
        assert stored is not None
        everything = stored.state["messages"]
        assert len(everything) == 6  # nothing deleted: four of them superseded
        assert set(stored.state["superseded"]) == {m["id"] for m in everything[:4]}
        assert [t for agent in agents for t in agent.turns] == ["hello", "hello", "changed"]
        assert _inbox(pg_dsn, cid) == []


async def test_a_message_stored_just_before_on_another_node_goes_first_and_is_waited_for(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    # The message reached another node (a row the owner has not heard of yet); the
    # regenerate comes after it. The owner applies the message first, which starts a
    # turn, then waits for that turn to end before it regenerates: the last user
    # message is then the new one. A send made to the owner meanwhile comes after.
    agents: list[ScriptedAgent] = []
    async with _nodes(pg_dsn, redis_server, agents) as (a, b):
        cid = "rw-" + uuid.uuid4().hex[:8]
        await _started_on_a(a, cid)
        _post_unheard(pg_dsn, cid, "send", "m-slow", {"content": "a slow one"})

        asked = await b.regenerate(cid, scope=U)

        async def slow_turn_running() -> bool:
            return any(agent.started_slow.is_set() for agent in agents)

        await wait_until(slow_turn_running, timeout=30, interval=0.02, message="the slow turn")
        # The regenerate waits for the turn; it is still in the inbox.
        assert _inbox(pg_dsn, cid) == [("regenerate", asked)]
        async with anyio.create_task_group() as tg:
            # Behind the stored regenerate: it returns once that was applied.
            tg.start_soon(lambda: a.send(cid, "after", scope=U, message_id="m-after"))
            await wait_until(
                lambda: a._mailbox._server._locks.get(cid, (None, 0))[1] == 2,  # type: ignore[attr-defined]
                timeout=10,
                interval=0.01,
                message="the send waits behind the regenerate",
            )
            for agent in agents:
                agent.release()
        state = await _settled(a, cid, 3, asked)
        assert _shown(state) == [
            ("user", "hello"),
            ("assistant", "echo: hello"),
            ("user", "a slow one"),
            ("assistant", "echo: a slow one"),
            ("user", "after"),
            ("assistant", "echo: after"),
        ]
        assert state.messages[2].id == asked
        assert state.messages[2].metadata["regenerates"] == "m-slow"
        assert state.messages[4].id == "m-after"
        assert [t for agent in agents for t in agent.turns] == [
            "hello",
            "a slow one",
            "a slow one",
            "after",
        ]
        assert _inbox(pg_dsn, cid) == []


async def test_what_the_stored_conversation_shows_is_refused_by_the_node_that_takes_the_call(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    agents: list[ScriptedAgent] = []
    async with _nodes(pg_dsn, redis_server, agents) as (a, b):
        cid = "rw-" + uuid.uuid4().hex[:8]
        hello, reply = (await _started_on_a(a, cid)).messages

        with pytest.raises(UnknownMessage, match="'nope'"):
            await b.regenerate(cid, message_id="nope", scope=U)
        with pytest.raises(UnknownMessage, match="'nope'"):
            await b.edit(cid, "nope", "text", scope=U)
        with pytest.raises(InvalidStatus, match="not a user message"):
            await b.regenerate(cid, message_id=reply.id, scope=U)
        with pytest.raises(InvalidStatus, match="not a user message"):
            await b.edit(cid, reply.id, "text", scope=U)
        with pytest.raises(AccessDenied):
            await b.regenerate(cid, scope="mallory")
        with pytest.raises(AccessDenied):
            await b.edit(cid, hello.id, "text", scope="mallory")

        # A message whose send still waits in the inbox has not been answered yet.
        _post_unheard(pg_dsn, cid, "send", "m-waiting", {"content": "a slow one"})
        with pytest.raises(InvalidStatus):
            await b.edit(cid, "m-waiting", "text", scope=U)

        # A turn runs (the send's stored turn start says so).
        await a.send(cid, "more", scope=U)  # applies m-waiting first: a slow turn
        with pytest.raises(InvalidStatus, match="a turn is running") as refused:
            await b.regenerate(cid, scope=U)
        assert refused.value.status == Status.RUNNING.value
        with pytest.raises(InvalidStatus, match="a turn is running"):
            await b.edit(cid, hello.id, "text", scope=U)

        assert [kind for kind, _ in _inbox(pg_dsn, cid)] == []  # nothing was stored
        for agent in agents:
            agent.release()
        await _settled(a, cid, 3)
        assert [t for agent in agents for t in agent.turns] == ["hello", "a slow one", "more"]


async def test_a_command_the_owner_refuses_is_dropped_and_one_taken_twice_changes_nothing(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    # Rows as a poster stores them, for the owner to apply before a later send: one
    # naming a message the history no longer shows (logged and dropped), then one
    # taken again after its first application (an owner that died before the delete).
    agents: list[ScriptedAgent] = []
    async with _nodes(pg_dsn, redis_server, agents) as (a, _b):
        cid = "rw-" + uuid.uuid4().hex[:8]
        hello, _ = (await _started_on_a(a, cid)).messages
        _post_unheard(pg_dsn, cid, "regenerate", "r-refused", {"message_id": "gone"})
        _post_unheard(pg_dsn, cid, "edit", "e-1", {"message_id": hello.id, "content": "new"})
        await a.send(cid, "next", scope=U)
        state = await _settled(a, cid, 2, "e-1")
        assert _shown(state) == [
            ("user", "new"),
            ("assistant", "echo: new"),
            ("user", "next"),
            ("assistant", "echo: next"),
        ]
        assert state.messages[0].id == "e-1"

        _post_unheard(pg_dsn, cid, "edit", "e-1", {"message_id": hello.id, "content": "new"})
        await a.send(cid, "last", scope=U)
        state = await _settled(a, cid, 3)
        assert _shown(state)[:4] == [
            ("user", "new"),
            ("assistant", "echo: new"),
            ("user", "next"),
            ("assistant", "echo: next"),
        ]
        assert [t for agent in agents for t in agent.turns] == ["hello", "new", "next", "last"]
        assert _inbox(pg_dsn, cid) == []
