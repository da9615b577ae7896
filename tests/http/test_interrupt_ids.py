"""Interrupt ids through the frontend protocols (asyncio and trio; pydantic-ai on asyncio).

The AI SDK's ``approvalId`` and the AG-UI interrupt ``id`` name the interrupt
the conversation stores (``GET /conversations/{id}`` shows its ``id``). An
answer that comes back naming an interrupt that is no longer pending is a 409
and nothing resumes, even when the question pending now is the same question:
a retried or replayed answer never answers a later one. An answer that names
the tool call only (a client of an older server) still answers the pending
interrupt.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sessionvisor.testing import ScriptedAgent

from ..agents._pai import ScriptedModel, adapter, supervisor
from ._support import ALICE, open_app
from .test_frontend_protocols import (
    ag_run,
    ag_user,
    ai_chat,
    approval,
    chat_body,
    of_type,
    run_input,
    user,
)

pytestmark = pytest.mark.anyio


async def pending_interrupt_id(env: Any, cid: str) -> str:
    answer = await env.client.get(f"/conversations/{cid}", headers=ALICE)
    assert answer.status_code == 200, answer.text
    interrupt = answer.json()["interrupt"]
    assert interrupt is not None
    return str(interrupt["id"])


def approved(message_id: str, request: dict[str, Any], ok: bool = True) -> dict[str, Any]:
    """What ``addToolApprovalResponse({id: approvalId, approved})`` sends back."""
    answer = approval(message_id, request["toolCallId"], ok)
    answer["parts"][0]["approval"]["id"] = request["approvalId"]
    return answer


# -- Vercel AI SDK ------------------------------------------------------------------------


async def test_the_approval_id_is_the_interrupt_id_and_an_old_approval_is_refused() -> None:
    agent = ScriptedAgent(stream=False)
    async with open_app(agent=agent) as env:
        _, first = await ai_chat(env, chat_body("c-1", user("interrupt me")))
        [request] = of_type(first, "tool-approval-request")
        assert request["approvalId"] == await pending_interrupt_id(env, "c-1")
        old_answer = approved("a-1", request)
        status, _ = await ai_chat(env, chat_body("c-1", old_answer))
        assert status == 200
        assert agent.answers == [{"approved": True}]

        # The same question again: a new interrupt, with an id of its own.
        _, second = await ai_chat(env, chat_body("c-1", user("interrupt me", "m-2")))
        [again] = of_type(second, "tool-approval-request")
        assert again["approvalId"] == await pending_interrupt_id(env, "c-1")
        assert again["approvalId"] != request["approvalId"]

        # The first approval, sent again (a retry, a replayed request): refused.
        status, [error] = await ai_chat(env, chat_body("c-1", old_answer))
        assert (status, error["error"]) == (409, "InvalidStatus")
        assert request["approvalId"] in error["detail"]
        assert agent.answers == [{"approved": True}]
        listed = await env.client.get("/conversations/c-1", headers=ALICE)
        assert listed.json()["status"] == "interrupted"

        status, _ = await ai_chat(env, chat_body("c-1", approved("a-2", again, False)))
    assert status == 200
    assert agent.answers == [{"approved": True}, {"approved": False}]


async def test_an_approval_naming_only_the_tool_call_answers_the_pending_interrupt() -> None:
    agent = ScriptedAgent(stream=False)
    async with open_app(agent=agent) as env:
        _, asked = await ai_chat(env, chat_body("c-1", user("interrupt me")))
        [request] = of_type(asked, "tool-approval-request")
        older = approval("a-1", request["toolCallId"], True)
        del older["parts"][0]["approval"]["id"]
        status, _ = await ai_chat(env, chat_body("c-1", older))
    assert status == 200
    assert agent.answers == [{"approved": True}]


# -- AG-UI --------------------------------------------------------------------------------


async def test_the_ag_ui_interrupt_id_is_the_interrupt_id_and_an_old_resume_is_refused() -> None:
    agent = ScriptedAgent(stream=False)
    async with open_app(agent=agent) as env:
        _, events = await ag_run(env, run_input("t-1", ag_user("interrupt me")))
        [first] = events[-1]["outcome"]["interrupts"]
        assert first["id"] == await pending_interrupt_id(env, "t-1")
        old_resume = [{"interruptId": first["id"], "status": "resolved", "payload": True}]
        status, _ = await ag_run(env, run_input("t-1", resume=old_resume))
        assert status == 200

        _, events = await ag_run(env, run_input("t-1", ag_user("interrupt me", "u-2")))
        [second] = events[-1]["outcome"]["interrupts"]
        assert second["id"] == await pending_interrupt_id(env, "t-1") != first["id"]
        assert second["message"] == first["message"]  # the same question

        status, [error] = await ag_run(env, run_input("t-1", resume=old_resume))
        assert (status, error["error"]) == (409, "InvalidStatus")
        # A tool message answering the old question's call is refused too.
        tool = {"id": "t-9", "role": "tool", "toolCallId": first["toolCallId"], "content": "x"}
        status, [error] = await ag_run(env, run_input("t-1", ag_user("interrupt me"), tool))
        assert (status, error["error"]) == (409, "InvalidStatus")
        assert agent.answers == [{"approved": True}]

        resume = [{"interruptId": second["id"], "status": "resolved", "payload": False}]
        status, _ = await ag_run(env, run_input("t-1", resume=resume))
    assert status == 200
    assert agent.answers == [{"approved": True}, {"approved": False}]


# -- the pydantic-ai adapter: the agent's own call ids, reused from one question to the next --


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_agents_reused_call_ids_do_not_let_an_old_answer_through(
    anyio_backend: str,
) -> None:
    import httpx

    from sessionvisor.http import create_app

    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        app = create_app(sup, heartbeat=None)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

            class Env:
                pass

            env = Env()
            env.client = client  # type: ignore[attr-defined]

            # "both" asks to approve call-a and to run call-b, with the same ids each time.
            _, asked = await ai_chat(env, chat_body("c-1", user("both")))
            [request] = of_type(asked, "tool-approval-request")
            interrupt_id = await pending_interrupt_id(env, "c-1")
            assert request == {
                "type": "tool-approval-request",
                "approvalId": f"{interrupt_id}:call-a",
                "toolCallId": "call-a",
            }
            answer = approved("a-1", request)
            answer["parts"].append(
                {
                    "type": "tool-fetch_record",
                    "toolCallId": "call-b",
                    "state": "output-available",
                    "input": {"key": "y"},
                    "output": "first",
                }
            )
            status, resumed = await ai_chat(env, chat_body("c-1", copy.deepcopy(answer)))
            assert status == 200
            assert "first" in "".join(d["delta"] for d in of_type(resumed, "text-delta"))

            _, again = await ai_chat(env, chat_body("c-1", user("both", "m-2")))
            [second] = of_type(again, "tool-approval-request")
            assert second["toolCallId"] == "call-a"
            assert second["approvalId"] == f"{await pending_interrupt_id(env, 'c-1')}:call-a"
            assert second["approvalId"] != request["approvalId"]
            status, [error] = await ai_chat(env, chat_body("c-1", answer))
            assert (status, error["error"]) == (409, "InvalidStatus")

            # AG-UI names the same interrupt the same way.
            _, ag = await ag_run(env, run_input("c-2", ag_user("both")))
            interrupts = ag[-1]["outcome"]["interrupts"]
            pending = await pending_interrupt_id(env, "c-2")
            assert [(i["id"], i["toolCallId"]) for i in interrupts] == [
                (f"{pending}:call-a", "call-a"),
                (f"{pending}:call-b", "call-b"),
            ]
            resume = [
                {"interruptId": interrupts[0]["id"], "status": "resolved", "payload": True},
                {"interruptId": interrupts[1]["id"], "status": "resolved", "payload": "one"},
            ]
            status, _ = await ag_run(env, run_input("c-2", resume=resume))
            assert status == 200
            _, ag = await ag_run(env, run_input("c-2", ag_user("both", "u-2")))
            assert ag[-1]["outcome"]["interrupts"][0]["id"] != interrupts[0]["id"]
            status, [error] = await ag_run(env, run_input("c-2", resume=resume))
            assert (status, error["error"]) == (409, "InvalidStatus")
            # An entry naming the agent's call by its tool call id alone (what a client of
            # an older server holds) answers the pending interrupt.
            bare = [
                {"interruptId": "call-a", "status": "resolved", "payload": True},
                {"interruptId": "call-b", "status": "resolved", "payload": "two"},
            ]
            status, ag = await ag_run(env, run_input("c-2", resume=bare))
            assert status == 200
            text = "".join(e["delta"] for e in ag if e["type"] == "TEXT_MESSAGE_CONTENT")
            assert "two" in text
