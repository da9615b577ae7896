"""The demo agent behind ``python -m sessionvisor demo``, driven over HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from sessionvisor import Status
from sessionvisor.http import header_or_query_scope
from sessionvisor.http._demo import DANGEROUS_TOOL, demo_router
from sessionvisor.testing import wait_for_status, wait_until

from ._support import ALICE, WAIT, asgi_stream, open_app

pytestmark = pytest.mark.anyio


def demo_app(**options: Any) -> Any:
    return open_app(
        demo_router(word_delay=0.001),
        scope_from_request=header_or_query_scope,
        **options,
    )


async def history(env: Any, cid: str) -> list[tuple[str, str]]:
    body = (await env.client.get(f"/conversations/{cid}", headers=ALICE)).json()
    return [(m["role"], m["content"]) for m in body["messages"]]


async def has_messages(env: Any, cid: str, count: int) -> bool:
    """The conversation's history, as ``GET`` shows it, holds ``count`` messages or more."""
    return len(await history(env, cid)) >= count


async def test_the_demo_streams_its_reply_word_by_word() -> None:
    async with demo_app() as env, asgi_stream(env.app, "/conversations/c-1/events") as stream:
        await stream.event()
        await env.send("c-1", "hello")
        frames = await stream.until(
            lambda f: f.event == "MessageAppended" and f.data["message"]["role"] == "assistant"
        )
        deltas = [f.data["text"] for f in frames if f.event == "Delta"]
        assert len(deltas) > 10
        reply = frames[-1].data["message"]["content"]
        assert "".join(deltas) == reply
        assert reply.startswith("Hello alice! You said: “hello”.")


async def test_the_demo_asks_before_the_dangerous_tool_and_runs_it_when_approved() -> None:
    async with demo_app() as env:
        await env.send("c-1", "please delete my files")
        await wait_for_status(env.sup, "c-1", Status.INTERRUPTED, scope="alice")
        body = (await env.client.get("/conversations/c-1", headers=ALICE)).json()
        interrupt = body["interrupt"]
        assert interrupt["kind"] == "question"
        assert interrupt["data"]["tool_calls"][0]["name"] == DANGEROUS_TOOL
        assert interrupt["data"]["tool_calls"][0]["dangerous"] is True
        assert "approval" in body["messages"][-1]["content"]

        response = await env.client.post(
            "/conversations/c-1/resume", json={"answer": {"approved": True}}, headers=ALICE
        )
        assert response.status_code == 202
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        messages = await history(env, "c-1")
        assert messages[-2][0] == "tool"
        assert DANGEROUS_TOOL in messages[-2][1]
        assert messages[-1] == (
            "assistant",
            f"Approved: I ran {DANGEROUS_TOOL}. Nothing was really deleted.",
        )


async def test_the_demo_declines_when_denied() -> None:
    async with demo_app() as env:
        await env.send("c-1", "something dangerous")
        await wait_for_status(env.sup, "c-1", Status.INTERRUPTED, scope="alice")
        response = await env.client.post(
            "/conversations/c-1/resume", json={"answer": {"approved": False}}, headers=ALICE
        )
        assert response.status_code == 202
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        messages = await history(env, "c-1")
        assert messages[-1] == ("assistant", f"Denied: I did not run {DANGEROUS_TOOL}.")
        assert all(role != "tool" for role, _ in messages)


async def test_the_demo_crashes_on_request_is_restarted_and_answers_the_next_message() -> None:
    async with demo_app() as env, asgi_stream(env.app, "/conversations/c-1/events") as stream:
        await stream.event()
        await env.send("c-1", "crash please")
        restarted = (await stream.until(lambda f: f.event == "Restarted"))[-1]
        assert "crashed on purpose" in restarted.data["error"]
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        await env.send("c-1", "are you back?")
        await wait_until(lambda: has_messages(env, "c-1", 4), timeout=WAIT, interval=0.01)
        messages = await history(env, "c-1")
        assert [role for role, _ in messages] == ["user", "system", "user", "assistant"]
        assert "restarted" in messages[1][1]
        assert "“are you back?”" in messages[3][1]
        sessions = (await env.client.get("/sessions", headers=ALICE)).json()["sessions"]
        assert sessions[0]["restarts"] == 1


async def test_the_demo_answers_queued_messages_with_one_reply() -> None:
    async with open_app(
        demo_router(word_delay=0.02), scope_from_request=header_or_query_scope
    ) as env:
        await env.send("c-1", "first")
        await wait_for_status(env.sup, "c-1", Status.RUNNING, timeout=WAIT, scope="alice")
        assert (await env.send("c-1", "second")).json()["queued"] is True
        assert (await env.send("c-1", "third")).json()["queued"] is True
        await wait_until(lambda: has_messages(env, "c-1", 5), timeout=WAIT, interval=0.01)
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        messages = await history(env, "c-1")
        assert [role for role, _ in messages] == ["user", "assistant", "user", "user", "assistant"]
        assert "“second / third”" in messages[-1][1]
        assert "2 messages arrived while I was busy" in messages[-1][1]


async def test_the_demo_personas_are_sticky() -> None:
    async with demo_app() as env:
        await env.send("c-1", "ahoy", request_opts={"persona": "pirate"})
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        assert (await history(env, "c-1"))[-1][1].startswith("Arr alice, matey!")
        await env.client.delete("/conversations/c-1", headers=ALICE)
        changed = await env.send("c-1", "hi", request_opts={"persona": "helper"})
        assert changed.status_code == 409
        same = await env.send("c-1", "hi again", request_opts={"persona": "pirate"})
        assert same.status_code == 202


async def test_the_demo_scope_accepts_the_user_query_parameter_for_event_source() -> None:
    async def first_event(cid: str, query: str, headers: dict[str, str]) -> tuple[Any, ...]:
        async with asgi_stream(
            env.app, f"/conversations/{cid}/events", headers=headers, query=query
        ) as stream:
            event = await stream.event()
            return stream.status, event.event, event.data["status"], event.data["seq"]

    async with demo_app() as env:
        await env.send("c-1", "hello")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        status, event, state, seq = await first_event("c-1", "user=alice", {})
        assert (status, event, state) == (200, "StatusChanged", "idle") and seq > 0
        # Bob is answered as for an id nobody uses, and learns nothing of alice's.
        unknown = await first_event("c-nobody", "user=bob", {})
        assert unknown == (200, "StatusChanged", "not_running", 0)
        assert await first_event("c-1", "user=bob", {}) == unknown
        # The header wins over the parameter.
        assert await first_event("c-1", "user=alice", {"X-User": "bob"}) == unknown
