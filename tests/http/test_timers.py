"""The timer routes and the demo's reminders, through the app (no server process)."""

from __future__ import annotations

from typing import Any

import pytest

from sessionvisor.http import header_or_query_scope
from sessionvisor.http._demo import demo_router
from sessionvisor.testing import ManualClock, wait_until

from ._support import ALICE, asgi_stream, open_app

pytestmark = pytest.mark.anyio
BOB = {"X-User": "bob"}


async def test_schedule_list_and_cancel_over_http() -> None:
    clock = ManualClock()
    async with open_app(clock=clock) as env:
        await env.send("c-1", "hello")
        url = "/conversations/c-1/timers"
        made = await env.client.post(
            url, json={"delay": 60, "payload": {"x": 1}, "key": "k1"}, headers=ALICE
        )
        assert made.status_code == 201, made.text
        body = made.json()
        assert (
            body["key"] == "k1" and body["payload"] == {"x": 1} and body["due"].endswith("+00:00")
        )
        at = clock.wall().isoformat()
        made2 = await env.client.post(url, json={"at": at, "payload": "now"}, headers=ALICE)
        assert made2.status_code == 201 and made2.json()["key"].startswith("t-")
        listed = await env.client.get(url, headers=ALICE)
        assert listed.status_code == 200
        assert "k1" in [t["key"] for t in listed.json()["timers"]]
        gone = await env.client.delete(f"{url}/k1", headers=ALICE)
        assert gone.status_code == 200 and gone.json()["result"] == "cancelled"
        again = await env.client.delete(f"{url}/k1", headers=ALICE)
        assert again.status_code == 404 and again.json()["error"] == "UnknownTimer"


@pytest.mark.parametrize(
    "body",
    [
        {"delay": -1},
        {"delay": True},
        {"delay": "10"},
        {"delay": 1e12},
        {},
        {"delay": 1, "at": "2030-01-01T00:00:00+00:00"},
        {"at": "2030-01-01T00:00:00"},
        {"at": "tomorrow"},
        {"delay": 1, "key": ""},
        {"delay": 1, "key": "k" * 129},
        {"delay": 1, "payload": "x" * 70_000},
        {"delay": 1, "surprise": 1},
    ],
)
async def test_bad_timers_are_400(body: dict[str, Any]) -> None:
    async with open_app(clock=ManualClock()) as env:
        await env.send("c-1", "hello")
        answer = await env.client.post("/conversations/c-1/timers", json=body, headers=ALICE)
        assert answer.status_code == 400, (body, answer.text)


async def test_another_owner_and_an_unknown_conversation_are_404() -> None:
    async with open_app(clock=ManualClock()) as env:
        await env.send("c-1", "hello")
        url = "/conversations/c-1/timers"
        assert (
            await env.client.post(url, json={"delay": 5, "key": "k"}, headers=ALICE)
        ).status_code == 201
        assert (await env.client.post(url, json={"delay": 5}, headers=BOB)).status_code == 404
        assert (await env.client.get(url, headers=BOB)).status_code == 404
        assert (await env.client.delete(f"{url}/k", headers=BOB)).status_code == 404
        unknown = "/conversations/c-nope/timers"
        assert (await env.client.get(unknown, headers=ALICE)).status_code == 404
        assert (await env.client.post(unknown, json={"delay": 1}, headers=ALICE)).status_code == 404


async def test_the_demo_reminds() -> None:
    clock = ManualClock()
    app = open_app(
        demo_router(word_delay=0.0), scope_from_request=header_or_query_scope, clock=clock
    )
    async with app as env, asgi_stream(env.app, "/conversations/c-r/events") as stream:
        await stream.event()
        await env.send("c-r", "remind me in 5 seconds to water the plants")
        frames = await stream.until(
            lambda f: f.event == "MessageAppended" and f.data["message"]["role"] == "assistant"
        )
        assert (
            "I will remind you in 5 seconds to water the plants"
            in frames[-1].data["message"]["content"]
        )
        (timer,) = (await env.client.get("/conversations/c-r/timers", headers=ALICE)).json()[
            "timers"
        ]
        assert timer["payload"] == {"reminder": "water the plants"}
        clock.advance(5)
        frames = await stream.until(
            lambda f: f.event == "MessageAppended" and f.data["message"]["role"] == "assistant"
        )
        assert frames[-1].data["message"]["content"] == "Reminder: water the plants"
        shown = [f.data["message"] for f in frames if f.event == "MessageAppended"]
        assert shown[0]["role"] == "system" and "fired" in shown[0]["content"]
        await wait_until(lambda: _no_timers(env))


async def _no_timers(env: Any) -> bool:
    answer = await env.client.get("/conversations/c-r/timers", headers=ALICE)
    return answer.json()["timers"] == []
