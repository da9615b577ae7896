"""``POST .../regenerate``, ``PATCH .../messages/{id}`` and ``POST .../cancel`` with
``keep_partial``: what a client sees, and the 404/409 answers."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from sessionvisor import Done, Status, Turn
from sessionvisor.testing import wait_for_status

from ._support import ALICE, BOB, WAIT, Env, open_app

pytestmark = pytest.mark.anyio


class Talker:
    """Answers "answer <n> to <text>"; "slow" streams a piece and waits for ``gate``."""

    def __init__(self) -> None:
        self.turns = 0
        self.seen: list[list[str]] = []
        self.streaming = anyio.Event()
        self.gate = anyio.Event()

    async def run(self, turn: Turn) -> Any:
        self.turns += 1
        self.seen.append([m.text() for m in turn.state.messages])
        last = [m for m in turn.state.messages if m.role == "user"][-1].text()
        if "slow" in last:
            turn.delta("half an ")
            turn.delta("answer")
            self.streaming.set()
            await self.gate.wait()
        return Done(turn.state, reply=f"answer {self.turns} to {last}")


async def _history(env: Env, cid: str = "c-1") -> list[dict[str, Any]]:
    response = await env.client.get(f"/conversations/{cid}", headers=ALICE)
    assert response.status_code == 200
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


async def _answered(env: Env, text: str) -> None:
    assert (await env.send("c-1", text)).status_code == 202
    await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice", timeout=WAIT)


async def _idle(env: Env) -> None:
    await anyio.wait_all_tasks_blocked()
    await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice", timeout=WAIT)


async def test_regenerate_answers_again_and_the_history_shows_the_new_answer() -> None:
    async with open_app(agent=Talker()) as env:
        await _answered(env, "hello")
        response = await env.client.post("/conversations/c-1/regenerate", headers=ALICE)
        assert response.status_code == 202
        body = response.json()
        assert body["conversation_id"] == "c-1" and body["status"] == "running"
        await _idle(env)
        history = await _history(env)
        assert [m["content"] for m in history] == ["hello", "answer 2 to hello"]
        assert history[0]["id"] == body["message_id"]
        assert "regenerates" in history[0]["metadata"]
        assert env.agent.seen[-1] == ["hello"]


async def test_regenerate_of_a_named_message_with_a_json_body() -> None:
    async with open_app(agent=Talker()) as env:
        await _answered(env, "one")
        await _answered(env, "two")
        first = (await _history(env))[0]["id"]
        response = await env.client.post(
            "/conversations/c-1/regenerate", json={"message_id": first}, headers=ALICE
        )
        assert response.status_code == 202
        await _idle(env)
        assert [m["content"] for m in await _history(env)] == ["one", "answer 3 to one"]


async def test_patch_edits_a_user_message_and_answers_it_again() -> None:
    async with open_app(agent=Talker()) as env:
        await _answered(env, "hello")
        await _answered(env, "what is 2+2")
        old = (await _history(env))[2]["id"]
        response = await env.client.patch(
            f"/conversations/c-1/messages/{old}", json={"content": "what is 3+3"}, headers=ALICE
        )
        assert response.status_code == 202
        await _idle(env)
        history = await _history(env)
        assert [m["content"] for m in history] == [
            "hello",
            "answer 1 to hello",
            "what is 3+3",
            "answer 3 to what is 3+3",
        ]
        assert history[2]["metadata"] == {"edits": old}
        assert env.agent.seen[-1] == ["hello", "answer 1 to hello", "what is 3+3"]


async def test_unknown_ids_are_404_and_a_reply_or_a_running_turn_409() -> None:
    async with open_app(agent=Talker()) as env:
        await _answered(env, "hello")
        reply = (await _history(env))[1]["id"]
        unknown = await env.client.post(
            "/conversations/c-1/regenerate", json={"message_id": "nope"}, headers=ALICE
        )
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "UnknownMessage"
        assert "'nope'" in unknown.json()["detail"]
        patched = await env.client.patch(
            "/conversations/c-1/messages/nope", json={"content": "x"}, headers=ALICE
        )
        assert patched.status_code == 404
        not_user = await env.client.patch(
            f"/conversations/c-1/messages/{reply}", json={"content": "x"}, headers=ALICE
        )
        assert not_user.status_code == 409
        assert "not a user message" in not_user.json()["detail"]

        assert (await env.send("c-1", "slow")).status_code == 202
        with anyio.fail_after(WAIT):
            await env.agent.streaming.wait()
        busy = await env.client.post("/conversations/c-1/regenerate", headers=ALICE)
        assert busy.status_code == 409
        assert busy.json()["error"] == "InvalidStatus"
        env.agent.gate.set()
        await _idle(env)


async def test_another_owners_or_an_unknown_conversation_is_404() -> None:
    async with open_app(agent=Talker()) as env:
        await _answered(env, "hello")
        mid = (await _history(env))[0]["id"]
        for headers in (BOB,):
            answer = await env.client.post("/conversations/c-1/regenerate", headers=headers)
            assert answer.status_code == 404
            assert answer.json()["error"] == "NotFound"
            edit = await env.client.patch(
                f"/conversations/c-1/messages/{mid}", json={"content": "x"}, headers=headers
            )
            assert edit.status_code == 404
            assert edit.json()["error"] == "NotFound"
        nobody = await env.client.post("/conversations/c-9/regenerate", headers=ALICE)
        assert nobody.status_code == 404
        assert env.agent.turns == 1


async def test_bad_bodies_are_400_or_413() -> None:
    async with open_app(agent=Talker(), supervisor_opts={"max_message_bytes": 100}) as env:
        await _answered(env, "hello")
        mid = (await _history(env))[0]["id"]
        for body in ({"content": 5}, {"content": [{"text": "no type"}]}, {}, {"other": 1}):
            answer = await env.client.patch(
                f"/conversations/c-1/messages/{mid}", json=body, headers=ALICE
            )
            assert answer.status_code == 400, body
        big = await env.client.patch(
            f"/conversations/c-1/messages/{mid}", json={"content": "x" * 200}, headers=ALICE
        )
        assert big.status_code == 413
        for body in ({"message_id": 5}, {"message_id": ""}, {"nope": True}):
            answer = await env.client.post(
                "/conversations/c-1/regenerate", json=body, headers=ALICE
            )
            assert answer.status_code == 400, body
        bad_flag = await env.client.post(
            "/conversations/c-1/cancel", json={"keep_partial": "yes"}, headers=ALICE
        )
        assert bad_flag.status_code == 400
        assert env.agent.turns == 1


@pytest.mark.parametrize("keep", [True, False])
async def test_cancel_with_keep_partial_keeps_the_streamed_text(keep: bool) -> None:
    async with open_app(agent=Talker()) as env:
        assert (await env.send("c-1", "slow")).status_code == 202
        with anyio.fail_after(WAIT):
            await env.agent.streaming.wait()
        body = {"keep_partial": True} if keep else {}
        response = await env.client.post("/conversations/c-1/cancel", json=body, headers=ALICE)
        assert response.json() == {"conversation_id": "c-1", "status": "cancelled"}
        history = await _history(env)
        if keep:
            assert [m["content"] for m in history] == ["slow", "half an answer"]
            assert history[1]["metadata"] == {"cancelled": True}
        else:
            assert [m["content"] for m in history] == ["slow"]
