"""The rules both frontend protocols share: which agent events are tool calls and results,
and what a stream has told its client about each call. Plus a size rule the HTTP
layer still keeps a copy of.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from sessionvisor import AgentEvent
from sessionvisor.http._interrupts import Decision
from sessionvisor.http._tools import ToolCallEvent, ToolLedger, ToolResultEvent, tool_event
from sessionvisor.testing import ScriptedAgent

from ._support import ALICE, open_app, scripted_router

pytestmark = pytest.mark.anyio


def agent_event(name: str, data: Any) -> AgentEvent:
    return AgentEvent(
        seq=1, agent_id="a", conversation_id="c", at=datetime.now(UTC), name=name, data=data
    )


def test_a_tool_call_and_its_result_are_told_apart_from_other_agent_events() -> None:
    call = tool_event(
        agent_event("tool_call", {"tool_call_id": "t1", "tool_name": "search", "args": {"q": 1}})
    )
    assert call == ToolCallEvent(call_id="t1", name="search", args={"q": 1})
    result = tool_event(
        agent_event("tool_result", {"tool_call_id": "t1", "tool_name": "search", "content": "ok"})
    )
    assert result == ToolResultEvent(call_id="t1", name="search", content="ok")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("usage", {"tool_call_id": "t1", "tool_name": "search"}),  # another event name
        ("tool_call", {"tool_name": "search"}),  # no call id
        ("tool_call", {"tool_call_id": 7, "tool_name": "search"}),  # not a str id
        ("tool_result", {"tool_call_id": "t1"}),  # no tool name
        ("tool_call", ["t1", "search"]),  # not a mapping
        ("tool_call", None),
    ],
)
def test_anything_else_is_an_agent_event(name: str, data: Any) -> None:
    assert tool_event(agent_event(name, data)) is None


def test_a_call_is_announced_once_and_answered_once() -> None:
    ledger = ToolLedger()
    assert ledger.answer("t1") is False  # a result for a call the client never saw
    assert ledger.announce("t1") is True
    assert ledger.announce("t1") is False
    assert ledger.answer("t1") is True
    assert ledger.answer("t1") is False


def test_the_clients_answers_hold_their_calls() -> None:
    ledger = ToolLedger()
    denied = ledger.take_decisions(
        [
            Decision("no", approved=False),
            Decision("given", output={"x": 1}),
            Decision("yes", approved=True),
            Decision("yes-too", approved=True),
        ]
    )
    assert denied == ["no"]
    # The client has all four: none is announced again.
    assert not any(ledger.announce(c) for c in ("no", "given", "yes", "yes-too"))
    # A denial and a given output are answers already; approvals wait for their result.
    assert ledger.answer("no") is False
    assert ledger.answer("given") is False
    ledger.returned("yes")  # the tool's own result came
    assert ledger.next_awaiting() == "yes-too"
    assert ledger.next_awaiting() is None
    assert ledger.drain_awaiting() == []


def test_approved_calls_still_waiting_end_with_the_turn() -> None:
    ledger = ToolLedger()
    ledger.take_decisions([Decision("a", approved=True), Decision("b", approved=True)])
    assert ledger.drain_awaiting() == ["a", "b"]
    assert ledger.drain_awaiting() == []
    assert ledger.answer("a") is True


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_content_over_a_sessions_own_limit_is_a_413() -> None:
    router = scripted_router(ScriptedAgent(stream=True), {"max_message_bytes": 100})
    async with open_app(router) as env:
        assert (await env.send("c-1", "hi")).status_code == 202
        response = await env.send("c-1", "x" * 500, headers=ALICE)
        assert response.status_code == 413
        assert response.json()["error"] == "PayloadTooLarge"
