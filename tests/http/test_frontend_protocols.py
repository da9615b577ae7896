"""The frontend protocols chunk by chunk, through the ASGI interface (asyncio and trio).

The Node tests in ``tests/frontend`` prove the real clients accept the streams;
these pin down what the streams contain: the chunk order, the tool parts of the
pydantic-ai adapter (asyncio only, as pydantic-ai), the synthesized tool call
of a plain interrupt, how an approval becomes a ``resume`` answer, and the
error answers.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from sessionvisor import Done, FunctionAgent, PendingInterrupt
from sessionvisor.http._errors import HTTPError
from sessionvisor.http._interrupts import (
    INTERRUPT_TOOL,
    Decision,
    interrupt_calls,
    resume_answer,
)
from sessionvisor.testing import ScriptedAgent

from ..agents._pai import ScriptedModel, adapter, supervisor
from ._support import ALICE, BOB, asgi_stream, open_app, scripted_router

pytestmark = pytest.mark.anyio


def user(text: str, message_id: str = "m-1") -> dict[str, Any]:
    return {"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}]}


def chat_body(cid: str, *messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": cid, "messages": list(messages), "trigger": "submit-message", **extra}


def chunks_of(text: str) -> list[Any]:
    out: list[Any] = []
    for line in text.split("\n"):
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def kinds(chunks: list[Any]) -> list[str]:
    """The chunk types, without the transient data parts."""
    return [
        c if isinstance(c, str) else c["type"]
        for c in chunks
        if isinstance(c, str) or not c["type"].startswith("data-")
    ]


def of_type(chunks: list[Any], kind: str) -> list[dict[str, Any]]:
    return [c for c in chunks if isinstance(c, dict) and c["type"] == kind]


async def ai_chat(env: Any, body: dict[str, Any], headers: Any = ALICE) -> tuple[int, list[Any]]:
    answer = await env.client.post("/ai-sdk/chat", json=body, headers=headers)
    if answer.status_code != 200:
        return answer.status_code, [answer.json()]
    assert answer.headers["x-vercel-ai-ui-message-stream"] == "v1"
    return 200, chunks_of(answer.text)


async def ag_run(env: Any, body: dict[str, Any], headers: Any = ALICE) -> tuple[int, list[Any]]:
    answer = await env.client.post("/ag-ui", json=body, headers=headers)
    if answer.status_code != 200:
        return answer.status_code, [answer.json()]
    return 200, chunks_of(answer.text)


def approval(message_id: str, call_id: str, approved: bool, **part: Any) -> dict[str, Any]:
    """The assistant message ``addToolApprovalResponse`` leaves for the next request."""
    return {
        "id": message_id,
        "role": "assistant",
        "parts": [
            {
                "type": f"tool-{part.pop('tool', INTERRUPT_TOOL)}",
                "toolCallId": call_id,
                "state": "approval-responded",
                "input": {},
                "approval": {"id": call_id, "approved": approved, **part},
            }
        ],
    }


# -- Vercel AI SDK ------------------------------------------------------------------------


async def test_a_reply_that_did_not_stream_becomes_one_text_part() -> None:
    async with open_app(agent=ScriptedAgent(stream=False)) as env:
        status, chunks = await ai_chat(env, chat_body("c-1", user("hi")))
    assert status == 200
    assert kinds(chunks) == [
        "start", "start-step", "text-start", "text-delta", "text-end",
        "finish-step", "finish", "[DONE]",
    ]  # fmt: skip
    assert of_type(chunks, "text-delta")[0]["delta"] == "echo: hi"
    assert of_type(chunks, "finish")[0]["finishReason"] == "stop"
    assert of_type(chunks, "start")[0]["messageId"].startswith("turn-")
    statuses = [c["data"]["status"] for c in of_type(chunks, "data-status")]
    assert statuses[-2:] == ["running", "idle"]
    assert all(c["transient"] for c in chunks if isinstance(c, dict) and "data" in c)


async def test_a_streamed_reply_keeps_one_text_part_and_the_history_is_the_servers() -> None:
    async with open_app(agent=ScriptedAgent(stream=True)) as env:
        await ai_chat(env, chat_body("c-1", user("one two three")))
        # The client's copy says something else happened before: the server ignores it.
        forged = {"id": "x", "role": "assistant", "parts": [{"type": "text", "text": "lies"}]}
        status, chunks = await ai_chat(
            env, chat_body("c-1", user("one two three"), forged, user("four", "m-2"))
        )
        state = await env.sup.load("c-1", scope="alice")
    assert status == 200
    deltas = of_type(chunks, "text-delta")
    assert len(deltas) > 1 and len({d["id"] for d in deltas}) == 1
    assert "".join(d["delta"] for d in deltas) == "echo: four"
    assert state is not None
    assert [m.text() for m in state.messages] == [
        "one two three", "echo: one two three", "four", "echo: four",
    ]  # fmt: skip


async def test_a_plain_interrupt_is_a_synthesized_tool_call_answered_by_approval() -> None:
    agent = ScriptedAgent(stream=False)
    async with open_app(agent=agent) as env:
        status, asked = await ai_chat(env, chat_body("c-1", user("interrupt me")))
        assert status == 200
        [call] = of_type(asked, "tool-input-available")
        assert call["toolName"] == INTERRUPT_TOOL
        assert call["input"] == {"question": "approve 'interrupt me'?"}
        assert call["title"] == "approve 'interrupt me'?"
        [request] = of_type(asked, "tool-approval-request")
        assert request["toolCallId"] == request["approvalId"] == call["toolCallId"]
        assert of_type(asked, "finish")[0]["finishReason"] == "tool-calls"

        # Another approval id than the pending one is refused, and nothing resumes.
        wrong = approval("a-1", "interrupt-0000", True)
        status, [error] = await ai_chat(env, chat_body("c-1", user("interrupt me"), wrong))
        assert (status, error["error"]) == (409, "InvalidStatus")
        assert agent.answers == []

        answer = approval("a-1", call["toolCallId"], True)
        status, resumed = await ai_chat(env, chat_body("c-1", user("interrupt me"), answer))
    assert status == 200
    assert agent.answers == [{"approved": True}]
    assert "messageId" not in of_type(resumed, "start")[0]  # it continues the client's message
    [output] = of_type(resumed, "tool-output-available")
    assert output == {
        "type": "tool-output-available",
        "toolCallId": call["toolCallId"],
        "output": "answer: {'approved': True}",
    }
    assert "".join(d["delta"] for d in of_type(resumed, "text-delta")) == (
        "resumed with {'approved': True}"
    )


async def test_a_denied_plain_interrupt_is_output_denied() -> None:
    agent = ScriptedAgent(stream=False)
    async with open_app(agent=agent) as env:
        _, asked = await ai_chat(env, chat_body("c-1", user("interrupt me")))
        call_id = of_type(asked, "tool-input-available")[0]["toolCallId"]
        deny = approval("a-1", call_id, False, reason="not now")
        status, resumed = await ai_chat(env, chat_body("c-1", deny))
    assert status == 200
    assert agent.answers == [{"approved": False, "reason": "not now"}]
    assert of_type(resumed, "tool-output-denied") == [
        {"type": "tool-output-denied", "toolCallId": call_id}
    ]
    assert not of_type(resumed, "tool-output-available")


async def test_a_crashing_turn_ends_with_an_error_chunk() -> None:
    opts = {"restart_on_error": True, "max_restarts": 5, "max_seconds": 60.0}
    async with open_app(scripted_router(ScriptedAgent(), supervisor_opts=opts), agent=None) as env:
        status, chunks = await ai_chat(env, chat_body("c-1", user("crash now")))
    assert status == 200
    assert kinds(chunks)[-2:] == ["error", "[DONE]"]
    assert "crashed on cue" in of_type(chunks, "error")[0]["errorText"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (chat_body("c-1", user("hi"), trigger="regenerate-message"), 404, "NotFound"),
        (chat_body("c-1"), 400, "ValidationError"),
        ({"messages": [user("hi")]}, 400, "ValidationError"),
        (chat_body("c-1", {"id": "m", "role": "user", "parts": []}), 400, "ValidationError"),
        (chat_body("c-1", user("hi"), request_opts={"scope": "root"}), 400, "ValidationError"),
        (chat_body("", user("hi")), 400, "ValidationError"),
        (chat_body("c-1", approval("a", "call", True)), 404, "NotFound"),
    ],
    ids=["regenerate", "no-messages", "no-id", "empty-message", "trusted-opts", "empty-id",
         "approval-for-nothing"],
)  # fmt: skip
async def test_bad_chat_bodies_are_clear_client_errors(
    body: dict[str, Any], status: int, error: str
) -> None:
    async with open_app() as env:
        answer = await env.client.post("/ai-sdk/chat", json=body, headers=ALICE)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error


async def test_an_answer_when_nothing_waits_is_409_and_a_text_only_assistant_message_400() -> None:
    async with open_app(agent=ScriptedAgent(stream=False)) as env:
        await ai_chat(env, chat_body("c-1", user("hi")))
        status, [error] = await ai_chat(env, chat_body("c-1", approval("a", "call-9", True)))
        assert (status, error["error"]) == (409, "InvalidStatus")
        said = {"id": "a", "role": "assistant", "parts": [{"type": "text", "text": "x"}]}
        status, [error] = await ai_chat(env, chat_body("c-1", said))
        assert (status, error["error"]) == (400, "ValidationError")
        plain = await env.client.post(
            "/ai-sdk/chat", content=b"hi", headers={**ALICE, "content-type": "text/plain"}
        )
        assert plain.status_code == 415


async def test_resume_stream_is_204_when_nothing_runs_and_for_another_owner() -> None:
    async with open_app(agent=ScriptedAgent(stream=False)) as env:
        unknown = await env.client.get("/ai-sdk/chat/c-1/stream", headers=ALICE)
        assert unknown.status_code == 204
        await ai_chat(env, chat_body("c-1", user("hi")))
        idle = await env.client.get("/ai-sdk/chat/c-1/stream", headers=ALICE)
        assert idle.status_code == 204
        # Another owner's conversation answers as an unknown one (no existence oracle).
        other = await env.client.get("/ai-sdk/chat/c-1/stream", headers=BOB)
        assert other.status_code == 204
        status, [error] = await ai_chat(env, chat_body("c-1", user("mine?")), headers=BOB)
        assert (status, error["error"]) == (404, "NotFound")


async def test_each_protocol_can_be_turned_off() -> None:
    async with open_app(ai_sdk=False, ag_ui=False) as env:
        assert (await env.client.post("/ai-sdk/chat", json={}, headers=ALICE)).status_code == 404
        assert (await env.client.post("/ag-ui", json={}, headers=ALICE)).status_code == 404
        sent = await env.send("c-1", "native routes still work")
        assert sent.status_code == 202


# -- AG-UI -------------------------------------------------------------------------------


def run_input(thread: str, *messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"threadId": thread, "runId": "run-1", "messages": list(messages), **extra}


def ag_user(text: str, message_id: str = "u-1") -> dict[str, Any]:
    return {"id": message_id, "role": "user", "content": text}


async def test_an_ag_ui_run_and_an_interrupt_answered_through_resume() -> None:
    agent = ScriptedAgent(stream=True)
    async with open_app(agent=agent) as env:
        status, events = await ag_run(env, run_input("t-1", ag_user("hello")))
        assert status == 200
        types = [e["type"] for e in events if e["type"] != "CUSTOM"]
        assert types[0] == "RUN_STARTED" and types[-1] == "RUN_FINISHED"
        assert "MESSAGES_SNAPSHOT" not in types
        assert types.count("TEXT_MESSAGE_START") == types.count("TEXT_MESSAGE_END") == 1
        started = next(e for e in events if e["type"] == "TEXT_MESSAGE_START")
        assert started["messageId"] == "u-1-reply"

        status, events = await ag_run(env, run_input("t-1", ag_user("interrupt me", "u-2")))
        snapshot = next(e for e in events if e["type"] == "MESSAGES_SNAPSHOT")
        assert [m["id"] for m in snapshot["messages"]] == ["u-1", "u-1-reply", "u-2"]
        finished = events[-1]
        assert finished["type"] == "RUN_FINISHED"
        [interrupt] = finished["outcome"]["interrupts"]
        assert interrupt["reason"] == "tool_approval"
        assert interrupt["toolCallId"] == interrupt["id"]
        assert interrupt["message"] == "approve 'interrupt me'?"
        call_starts = [e["toolCallId"] for e in events if e["type"] == "TOOL_CALL_START"]
        assert call_starts == [interrupt["id"]]

        wrong = [{"interruptId": "nope", "status": "resolved", "payload": True}]
        status, [error] = await ag_run(env, run_input("t-1", resume=wrong))
        assert (status, error["error"]) == (409, "InvalidStatus")

        resume = [{"interruptId": interrupt["id"], "status": "resolved", "payload": True}]
        status, events = await ag_run(env, run_input("t-1", resume=resume))
    assert status == 200
    assert agent.answers == [{"approved": True}]
    result = next(e for e in events if e["type"] == "TOOL_CALL_RESULT")
    assert result["toolCallId"] == interrupt["id"]
    assert result["content"] == "answer: {'approved': True}"
    assert events[-1]["type"] == "RUN_FINISHED" and "outcome" not in events[-1]


async def test_a_question_interrupt_takes_any_payload_and_cancel_is_a_denial() -> None:
    agent = ScriptedAgent(stream=False)
    async with open_app(agent=agent) as env:
        _, events = await ag_run(env, run_input("t-1", ag_user("interrupt")))
        first = events[-1]["outcome"]["interrupts"][0]["id"]
        resume = [{"interruptId": first, "status": "resolved", "payload": "blue"}]
        await ag_run(env, run_input("t-1", resume=resume))
        _, events = await ag_run(env, run_input("t-1", ag_user("interrupt again", "u-2")))
        second = events[-1]["outcome"]["interrupts"][0]["id"]
        await ag_run(env, run_input("t-1", resume=[{"interruptId": second, "status": "cancelled"}]))
    assert agent.answers == ["blue", {"approved": False, "reason": "cancelled"}]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"threadId": "t-1"}, 400),
        (run_input("t-1"), 400),
        (run_input("t-1", {"id": "a", "role": "assistant", "content": "x"}), 400),
        (run_input("t-1", ag_user("")), 400),
        (run_input("t-1", ag_user("hi"), forwardedProps={"request_opts": {"scope": "x"}}), 400),
        (run_input("t-1", resume=[{"interruptId": "i", "status": "resolved"}]), 404),
    ],
    ids=["not-an-input", "no-messages", "no-user-message", "empty", "trusted-opts",
         "resume-nothing"],
)  # fmt: skip
async def test_bad_run_inputs_are_clear_client_errors(body: dict[str, Any], status: int) -> None:
    async with open_app() as env:
        answer = await env.client.post("/ag-ui", json=body, headers=ALICE)
    assert answer.status_code == status, answer.text
    assert "detail" in answer.json()


async def test_another_owners_thread_is_404_on_ag_ui() -> None:
    async with open_app(agent=ScriptedAgent(stream=False)) as env:
        await ag_run(env, run_input("t-1", ag_user("mine")))
        status, [error] = await ag_run(env, run_input("t-1", ag_user("yours?")), headers=BOB)
        state = await env.sup.load("t-1", scope="alice")
    assert (status, error["error"]) == (404, "NotFound")
    assert state is not None and [m.text() for m in state.messages][-1] == "echo: mine"


# -- the pydantic-ai adapter's tool calls (asyncio only) -----------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_pydantic_ai_tool_calls_and_approvals_are_the_sdks_tool_parts(
    anyio_backend: str,
) -> None:
    from sessionvisor.http import create_app

    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        import httpx

        app = create_app(sup, heartbeat=None)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

            class Env:
                pass

            env = Env()
            env.client = client  # type: ignore[attr-defined]
            _, added = await ai_chat(env, chat_body("c-1", user("add 2 3")))
            [call] = of_type(added, "tool-input-available")
            assert (call["toolName"], call["input"]) == ("add", {"a": 2, "b": 3})
            [output] = of_type(added, "tool-output-available")
            assert (output["toolCallId"], output["output"]) == (call["toolCallId"], 5)
            assert kinds(added).index("tool-input-available") < kinds(added).index(
                "tool-output-available"
            )

            _, asked = await ai_chat(env, chat_body("c-1", user("delete notes.txt", "m-2")))
            [request] = of_type(asked, "tool-approval-request")
            [pending] = [
                c for c in of_type(asked, "tool-input-available") if c["toolName"] == "delete_file"
            ]
            assert request["toolCallId"] == pending["toolCallId"]
            answer = approval("a", pending["toolCallId"], True, tool="delete_file")
            status, resumed = await ai_chat(env, chat_body("c-1", answer))
            assert status == 200
            [done] = of_type(resumed, "tool-output-available")
            assert done["output"] == "deleted notes.txt"
            text = "".join(d["delta"] for d in of_type(resumed, "text-delta"))
            assert text == "tool said: deleted notes.txt"

            _, ag = await ag_run(env, run_input("c-2", ag_user("add 4 5")))
            types = [e["type"] for e in ag if e["type"] != "CUSTOM"]
            assert types[types.index("TOOL_CALL_START") : types.index("TOOL_CALL_START") + 4] == [
                "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT",
            ]  # fmt: skip
            args = next(e for e in ag if e["type"] == "TOOL_CALL_ARGS")["delta"]
            assert json.loads(args) == {"a": 4, "b": 5}

            # A tool the client runs (pydantic-ai's external call): addToolOutput answers it.
            _, fetched = await ai_chat(env, chat_body("c-3", user("fetch k-7")))
            assert not of_type(fetched, "tool-approval-request")
            [call] = of_type(fetched, "tool-input-available")
            assert (call["toolName"], call["input"]) == ("fetch_record", {"key": "k-7"})
            output = {
                "id": "a",
                "role": "assistant",
                "parts": [
                    {
                        "type": "tool-fetch_record",
                        "toolCallId": call["toolCallId"],
                        "state": "output-available",
                        "input": call["input"],
                        "output": {"value": 42},
                    }
                ],
            }
            status, resumed = await ai_chat(env, chat_body("c-3", output))
            assert status == 200
            text = "".join(d["delta"] for d in of_type(resumed, "text-delta"))
            assert text == "tool said: {'value': 42}"

            # The same on AG-UI: the run ends on the call, a tool message answers it.
            _, ag = await ag_run(env, run_input("c-4", ag_user("fetch k-9")))
            [interrupt] = ag[-1]["outcome"]["interrupts"]
            assert interrupt["reason"] == "tool_result"
            answer = {
                "id": "t-1",
                "role": "tool",
                "toolCallId": interrupt["toolCallId"],
                "content": "found it",
            }
            _, ag = await ag_run(env, run_input("c-4", ag_user("fetch k-9"), answer))
            text = "".join(e["delta"] for e in ag if e["type"] == "TEXT_MESSAGE_CONTENT")
            assert text == "tool said: found it"


# -- interrupts as tool calls ---------------------------------------------------------------


def test_interrupts_become_tool_calls_with_stable_ids() -> None:
    question = PendingInterrupt(data={"question": "ok?"})
    [call] = interrupt_calls(question)
    assert call.name == INTERRUPT_TOOL and call.kind == "approval" and not call.native
    assert interrupt_calls(PendingInterrupt(data={"question": "ok?"}))[0].id == call.id
    assert interrupt_calls(PendingInterrupt(data={"question": "other?"}))[0].id != call.id
    assert interrupt_calls(PendingInterrupt(kind="notice", data="fyi")) == []
    assert interrupt_calls(None) == []
    native = PendingInterrupt(
        data={
            "calls": [
                {"tool_call_id": "c1", "tool_name": "pay", "args": {"x": 1}, "kind": "approval"},
                {"tool_call_id": "c2", "tool_name": "fetch", "args": {}, "kind": "external"},
            ]
        }
    )
    assert [(c.id, c.kind, c.native) for c in interrupt_calls(native)] == [
        ("c1", "approval", True),
        ("c2", "external", True),
    ]
    answer = resume_answer(
        "c", native, [Decision("c1", approved=False, reason="no"), Decision("c2", output=7)]
    )
    assert answer == {"calls": {"c1": {"approved": False, "reason": "no"}, "c2": {"result": 7}}}
    with pytest.raises(HTTPError) as refused:
        resume_answer("c", None, [Decision("c1", approved=True)])
    assert refused.value.status == 409
    with pytest.raises(HTTPError) as empty:
        resume_answer("c", native, [])
    assert empty.value.status == 400


# -- resuming the running turn -------------------------------------------------------------


async def test_resume_stream_replays_the_running_turn_from_its_start_after_a_restart() -> None:
    opts = {"restart_on_error": True, "max_restarts": 5, "max_seconds": 60.0}
    agent = ScriptedAgent(stream=True, crash_on_start=1)
    async with open_app(scripted_router(agent, supervisor_opts=opts), agent=None) as env:
        status, first = await ai_chat(env, chat_body("c-1", user("first words")))
        assert status == 200 and agent.starts == 2  # the first start crashed: restarted
        assert "".join(d["delta"] for d in of_type(first, "text-delta")) == "echo: first words"
        await env.send("c-1", "slow words")  # a turn the client did not start here
        with anyio.fail_after(5):
            await agent.started_slow.wait()
        async with asgi_stream(env.app, "/ai-sdk/chat/c-1/stream") as stream:
            frames = [await stream.frame()]  # the replay, up to the slow turn's wait
            while (
                frames[-1].fields.get("data") is None or "running" not in frames[-1].fields["data"]
            ):
                frames.append(await stream.frame())
            agent.release()
            while frames[-1].fields.get("data") != "[DONE]":
                frames.append(await stream.frame())
    chunks = [
        f.fields["data"] if f.fields["data"] == "[DONE]" else json.loads(f.fields["data"])
        for f in frames
        if "data" in f.fields
    ]
    assert stream.status == 200
    assert kinds(chunks) == [
        "start", "start-step", *["text-start"], *(["text-delta"] * 3), "text-end",
        "finish-step", "finish", "[DONE]",
    ]  # fmt: skip
    assert of_type(chunks, "start")[0]["messageId"].startswith("turn-")
    assert "".join(d["delta"] for d in of_type(chunks, "text-delta")) == "echo: slow words"


async def test_a_retried_send_is_answered_with_the_reply_it_already_got() -> None:
    agent = ScriptedAgent(stream=False)
    async with open_app(agent=agent) as env:
        body = chat_body("c-1", user("hi"))
        await ai_chat(env, body)
        status, again = await ai_chat(env, body)  # the client lost the answer and retries
        assert status == 200
        assert "".join(d["delta"] for d in of_type(again, "text-delta")) == "echo: hi"
        assert kinds(again)[-1] == "[DONE]"

        await ag_run(env, run_input("t-1", ag_user("hey")))
        status, events = await ag_run(env, run_input("t-1", ag_user("hey")))
        assert status == 200
        assert [e["type"] for e in events] == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "RUN_FINISHED"]
        assert [m["content"] for m in events[1]["messages"]] == ["hey", "echo: hey"]
        chat = await env.sup.load("c-1", scope="alice")
    assert agent.turns == ["hi", "hey"]  # each message was answered once
    assert chat is not None and [m.text() for m in chat.messages] == ["hi", "echo: hi"]


async def test_a_session_that_gives_up_ends_the_stream_instead_of_hanging() -> None:
    opts = {"restart_on_error": True, "max_restarts": 1, "max_seconds": 60.0}
    agent = ScriptedAgent(crash_on_start=100)
    async with open_app(scripted_router(agent, supervisor_opts=opts), agent=None) as env:
        with anyio.fail_after(5):
            status, chunks = await ai_chat(env, chat_body("c-1", user("hello")))
            ag_status, events = await ag_run(env, run_input("c-2", ag_user("hello")))
    # The start fails, so the send does: a 503 saying to try again, never a hanging stream.
    assert (status, chunks[0]["error"]) == (503, "SessionFailedError")
    assert (ag_status, events[0]["error"]) == (503, "SessionFailedError")


async def test_a_client_that_falls_behind_still_gets_the_whole_reply() -> None:
    words = [f"w{i} " for i in range(600)]

    async def fast(turn: Any) -> Any:
        # Far quicker than the stream drains: its subscription overflows and is resumed.
        for i, word in enumerate(words):
            turn.delta(word)
            if i % 150 == 149:
                await anyio.lowlevel.checkpoint()
        return Done(turn.state)

    opts = {"subscriber_buffer": 8, "replay_buffer": 4}
    async with open_app(agent=FunctionAgent(fast), supervisor_opts=opts) as env:
        with capture_logs() as logs:
            status, chunks = await ai_chat(env, chat_body("c-1", user("go")))
            ag_status, events = await ag_run(env, run_input("c-2", ag_user("go")))
    assert (status, ag_status) == (200, 200)
    assert not [e for e in logs if e["log_level"] == "error"]
    assert "".join(d["delta"] for d in of_type(chunks, "text-delta")) == "".join(words)
    assert kinds(chunks)[-3:] == ["finish-step", "finish", "[DONE]"]
    assert any(c["data"].get("status") == "running" for c in of_type(chunks, "data-status"))
    open_parts: set[str] = set()
    for chunk in chunks:  # every delta belongs to an open text part
        if isinstance(chunk, dict) and chunk["type"] == "text-start":
            open_parts.add(chunk["id"])
        elif isinstance(chunk, dict) and chunk["type"] == "text-delta":
            assert chunk["id"] in open_parts
        elif isinstance(chunk, dict) and chunk["type"] == "text-end":
            open_parts.remove(chunk["id"])
    text = "".join(e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT")
    assert text == "".join(words)
    assert events[-1]["type"] == "RUN_FINISHED"
    gaps = [e for e in events if e["type"] == "CUSTOM" and e["value"].get("gap")]
    assert gaps, "the test must make the stream fall behind"


async def test_the_snapshot_never_holds_the_reply_the_run_then_streams() -> None:
    # A reply that does not stream is stored at once: however quick the turn, the
    # snapshot stops at the new message, so the client does not get the reply twice.
    async with open_app(agent=ScriptedAgent(stream=False)) as env:
        for i in range(1, 6):
            _, events = await ag_run(env, run_input("t-1", ag_user(f"msg {i}", f"u-{i}")))
            snapshot = [e for e in events if e["type"] == "MESSAGES_SNAPSHOT"]
            ids = [m["id"] for m in snapshot[0]["messages"]] if snapshot else []
            assert f"u-{i}-reply" not in ids
            assert ids[-1:] == ([f"u-{i}"] if i > 1 else [])
            started = [e["messageId"] for e in events if e["type"] == "TEXT_MESSAGE_START"]
            assert started == [f"u-{i}-reply"]
