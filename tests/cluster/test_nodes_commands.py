"""Commands other than ``send`` across real node processes: an answer posted to
a node that does not own the conversation survives the owner's ``kill -9`` in
the turn it started. (The order of commands across nodes is checked in
``test_command_order.py``, where the owner's wake-up can be held back.)

Three ``python -m sessionvisor demo`` processes share the module's fresh
PostgreSQL database and its private redis-server (see ``_nodes``). The demo
agent asks for approval when a message says "delete"; an approving answer
appends one ``delete_files`` tool message and replies "Approved: ...".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from sessionvisor.testing import wait_until
from tests._support.servers import RedisServer

from ._nodes import (
    HEADERS,
    POLL,
    Node,
    Nodes,
    Stored,
    cluster_nodes,
    explained,
    read_leases,
    read_store,
)

pytestmark = pytest.mark.anyio

QUESTION = "please delete my files"


async def _view(http: httpx.AsyncClient, node: Node, cid: str) -> dict[str, Any]:
    answer = await http.get(f"{node.url}/conversations/{cid}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def _owner(pg_dsn: str, nodes: Nodes, cid: str) -> Node:
    leases = read_leases(pg_dsn, cid)
    assert cid in leases and leases[cid].live, leases
    return nodes[leases[cid].node_id]


async def _ask(http: httpx.AsyncClient, nodes: Nodes, pg_dsn: str, cid: str) -> tuple[Node, str]:
    """Start the conversation on n1 with the approval question; return its owner
    and the pending interrupt's id, once the question is stored."""
    n1 = nodes["n1"]
    sent = await http.post(f"{n1.url}/conversations/{cid}/messages", json={"content": QUESTION})
    assert sent.status_code == 202, sent.text
    owner = await _owner(pg_dsn, nodes, cid)
    view: dict[str, Any] = {}

    async def asked() -> bool:
        nonlocal view
        view = await _view(http, owner, cid)
        return view["status"] == "interrupted" and view["interrupt"] is not None

    await wait_until(
        asked, timeout=60, interval=POLL, message=explained("the question", nodes.report)
    )
    return owner, str(view["interrupt"]["id"])


def _tool_runs(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if m.get("role") == "tool")


def _replies(messages: list[dict[str, Any]]) -> list[str]:
    from ._nodes import text_of

    return [text_of(m) for m in messages if m.get("role") == "assistant"]


async def _carried_out_after_the_cut(pg_dsn: str, nodes: Nodes, cid: str, cut: str) -> Stored:
    """Check that ``cut`` came before the approved reply, then wait (with no request)
    until some node stores that reply; return the stored conversation."""
    state = read_store(pg_dsn, cid)[cid]
    assert not any(r.startswith("Approved") for r in _replies(state.messages)), (
        f"the approved turn ended before {cut}: the test did not cut it"
    )

    def carried_out() -> bool:
        nonlocal state
        state = read_store(pg_dsn, cid)[cid]
        return any(r.startswith("Approved") for r in _replies(state.messages))

    await wait_until(
        carried_out,
        timeout=60,
        interval=POLL,
        message=explained(f"the answer carried out after {cut}", nodes.report),
    )
    return state


async def test_an_answer_posted_to_another_node_is_carried_out_once_after_the_owner_is_killed(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    # The answer goes to a node that does not own the conversation (a row in the
    # inbox, 202). The owner applies it and is killed with -9 while the approved
    # turn streams its reply. With no further request, another node carries the
    # answer out: the tool runs once and the question is never pending again.
    cid = "cmd-answer-kill"
    async with (
        cluster_nodes(pg_dsn, redis_server.url, tmp_path, word_delay=0.25) as nodes,
        httpx.AsyncClient(headers=HEADERS, timeout=10) as http,
    ):
        owner, interrupt_id = await _ask(http, nodes, pg_dsn, cid)
        other = next(n for n in nodes if n is not owner)
        answered = await http.post(
            f"{other.url}/conversations/{cid}/resume",
            json={"answer": {"approved": True}, "interrupt_id": interrupt_id},
        )
        assert answered.status_code == 202, answered.text

        async def running_on_owner() -> bool:
            return (await _view(http, owner, cid))["status"] == "running"

        await wait_until(
            running_on_owner,
            timeout=30,
            interval=0.01,
            message=explained("the owner runs the answer", nodes.report),
        )
        owner.kill()
        state = await _carried_out_after_the_cut(pg_dsn, nodes, cid, "the kill")
        assert _tool_runs(state.messages) == 1, state.messages
        survivors = [n for n in nodes if n is not owner]
        view = await _view(http, survivors[0], cid)
        assert view["interrupt"] is None, view
        assert [r for r in _replies(view["messages"]) if r.startswith("Approved")] == [
            _replies(state.messages)[-1]
        ]


async def test_a_stop_during_the_turn_of_an_answer_is_carried_out_by_some_node_unasked(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    # stop unloads: the answer being carried out goes back to the store with its
    # question, flagged as unanswered work, and the next sweep of some node carries
    # it out with no request (the question is not asked again).
    cid = "cmd-answer-stop"
    async with (
        cluster_nodes(pg_dsn, redis_server.url, tmp_path, word_delay=0.25) as nodes,
        httpx.AsyncClient(headers=HEADERS, timeout=10) as http,
    ):
        owner, interrupt_id = await _ask(http, nodes, pg_dsn, cid)
        answered = await http.post(
            f"{owner.url}/conversations/{cid}/resume",
            json={"answer": {"approved": True}, "interrupt_id": interrupt_id},
        )
        assert answered.status_code == 202, answered.text
        stopped = await http.delete(f"{owner.url}/conversations/{cid}")
        assert stopped.status_code == 200 and stopped.json()["result"] == "stopped", stopped.text
        state = await _carried_out_after_the_cut(pg_dsn, nodes, cid, "the stop")
        assert _tool_runs(state.messages) == 1, state.messages
        view = await _view(http, owner, cid)
        assert view["interrupt"] is None, view


async def test_a_regenerate_posted_to_a_node_that_does_not_serve_the_conversation(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    # POST /regenerate to a node that does not own the conversation: 202 with the id
    # of the message asked again, which the owner's history then shows, answered,
    # in place of the first exchange (kept in the store, superseded).
    cid = "cmd-regenerate"
    async with (
        cluster_nodes(pg_dsn, redis_server.url, tmp_path) as nodes,
        httpx.AsyncClient(headers=HEADERS, timeout=10) as http,
    ):
        n1 = nodes["n1"]
        sent = await http.post(f"{n1.url}/conversations/{cid}/messages", json={"content": "hi"})
        assert sent.status_code == 202, sent.text
        owner = await _owner(pg_dsn, nodes, cid)

        async def answered(node: Node, user_id: str | None = None) -> bool:
            view = await _view(http, node, cid)
            messages = view["messages"]
            return (
                view["status"] == "idle"
                and bool(messages)
                and messages[-1]["role"] == "assistant"
                and (user_id is None or messages[0]["id"] == user_id)
            )

        await wait_until(
            lambda: answered(owner), timeout=60, interval=POLL, message="the first answer"
        )
        first = (await _view(http, owner, cid))["messages"]
        other = next(n for n in nodes if n is not owner)
        posted = await http.post(f"{other.url}/conversations/{cid}/regenerate")
        assert posted.status_code == 202, posted.text
        asked = posted.json()["message_id"]
        assert asked != first[0]["id"]
        await wait_until(
            lambda: answered(owner, asked),
            timeout=60,
            interval=POLL,
            message=explained("the regenerated answer", nodes.report),
        )
        view = await _view(http, other, cid)
        assert [m["role"] for m in view["messages"]] == ["user", "assistant"]
        assert view["messages"][0]["metadata"]["regenerates"] == first[0]["id"]
        stored = read_store(pg_dsn, cid)[cid]
        assert [m["id"] for m in stored.messages[:2]] == [m["id"] for m in first]
        assert len(stored.messages) == 4
        assert read_leases(pg_dsn, cid)[cid].node_id == owner.node_id
