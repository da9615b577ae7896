"""A conversation owned by one scope is invisible to every other: 404 on every route.

The answer for someone else's conversation is the very answer for one that
does not exist, so a client cannot learn which ids are taken. The scope comes
only from ``scope_from_request``; the body cannot set it.
"""

from __future__ import annotations

from typing import Any

import pytest

from sessionvisor import SingleRouter, Status
from sessionvisor.testing import ScriptedAgent, wait_for_status

from ._support import ALICE, BOB, asgi_stream, open_app

pytestmark = pytest.mark.anyio

STRANGERS = [
    pytest.param(BOB, id="bob"),
    pytest.param({}, id="anonymous"),
    pytest.param({"X-User": "Alice"}, id="other-case"),
]

ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/conversations/{cid}/messages", {"content": "hi"}),
    ("POST", "/conversations/{cid}/resume", {"answer": "yes"}),
    ("POST", "/conversations/{cid}/dismiss", None),
    ("POST", "/conversations/{cid}/cancel", None),
    ("GET", "/conversations/{cid}", None),
    ("DELETE", "/conversations/{cid}", None),
    ("DELETE", "/conversations/{cid}?purge=true", None),
]


def not_found(cid: str) -> dict[str, str]:
    return {"error": "NotFound", "detail": f"conversation {cid!r} not found"}


async def _alice_conversations(env: Any) -> None:
    """``live``: running and interrupted; ``stored``: stopped, only in the store."""
    await env.send("live", "interrupt please")
    await env.send("stored", "hello")
    await wait_for_status(env.sup, "live", Status.INTERRUPTED, scope="alice")
    await wait_for_status(env.sup, "stored", Status.IDLE, scope="alice")
    assert (await env.client.delete("/conversations/stored", headers=ALICE)).status_code == 200


@pytest.mark.parametrize("stranger", STRANGERS)
@pytest.mark.parametrize("cid", ["live", "stored"])
@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_another_scope_gets_the_unknown_conversation_answer(
    stranger: dict[str, str], cid: str, method: str, path: str, body: dict[str, Any] | None
) -> None:
    async with open_app() as env:
        await _alice_conversations(env)
        before = (await env.client.get(f"/conversations/{cid}", headers=ALICE)).json()

        response = await env.client.request(
            method, path.format(cid=cid), json=body, headers=stranger
        )
        assert response.status_code == 404
        assert response.json() == not_found(cid)
        assert response.headers["content-type"] == "application/json"

        # Nothing happened to alice's conversation.
        after = (await env.client.get(f"/conversations/{cid}", headers=ALICE)).json()
        assert after == before
        assert env.agent.answers == []


@pytest.mark.parametrize(("method", "path", "body"), ROUTES[1:])
async def test_an_unknown_conversation_gets_the_same_404(
    method: str, path: str, body: dict[str, Any] | None
) -> None:
    async with open_app() as env:
        response = await env.client.request(
            method, path.format(cid="nobody"), json=body, headers=ALICE
        )
        assert response.status_code == 404
        assert response.json() == not_found("nobody")
        assert await env.sup.store.load("nobody") is None
        assert env.sup.get("nobody") is None


@pytest.mark.parametrize("stranger", STRANGERS)
@pytest.mark.parametrize("cid", ["live", "stored"])
async def test_another_scope_cannot_open_the_event_stream(
    stranger: dict[str, str], cid: str
) -> None:
    async with open_app() as env:
        await _alice_conversations(env)
        async with asgi_stream(env.app, f"/conversations/{cid}/events", headers=stranger) as s:
            assert s.status == 404
            assert await s.json() == not_found(cid)


async def test_sessions_never_lists_another_scopes_sessions() -> None:
    async with open_app() as env:
        await _alice_conversations(env)
        for stranger in (BOB, {}):
            listing = await env.client.get("/sessions", headers=stranger)
            assert listing.json() == {"sessions": []}


async def test_request_opts_cannot_set_the_scope() -> None:
    seen: list[dict[str, Any]] = []

    def factory(agent_id: str, config: dict[str, Any]) -> Any:
        seen.append(config)
        return ScriptedAgent()

    async with open_app(SingleRouter(factory)) as env:
        refused = await env.send("c-1", "hi", request_opts={"scope": "bob"})
        assert refused.status_code == 400
        also = await env.send("c-1", "hi", request_opts={"conversation_id": "other"})
        assert also.status_code == 400

        sent = await env.send("c-1", "hi", request_opts={"owner": "bob", "user": "bob"})
        assert sent.status_code == 202
        assert seen[-1]["scope"] == "alice"
        assert seen[-1]["conversation_id"] == "c-1"
        assert (await env.client.get("/conversations/c-1", headers=BOB)).status_code == 404
        assert (await env.client.get("/conversations/c-1", headers=ALICE)).status_code == 200


async def test_an_anonymous_conversation_is_open_to_everyone() -> None:
    async with open_app() as env:
        assert (await env.send("open", "hi", headers={})).status_code == 202
        await wait_for_status(env.sup, "open", Status.IDLE)
        for who in (ALICE, BOB, {}):
            history = await env.client.get("/conversations/open", headers=who)
            assert history.status_code == 200
