"""A conversation owned by one scope is invisible to every other.

The answer for someone else's conversation is the very answer for one that
does not exist (the same status, headers and body, after the same work), so a
client cannot learn which ids are taken: a 404 where a command needs the
conversation, and on the event streams the stream of an id nobody uses, which
never carries the owner's events. The scope comes only from
``scope_from_request``; the body cannot set it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from sessionvisor import MemoryStore, SingleRouter, Status
from sessionvisor.testing import FlakyStore, ScriptedAgent, wait_for_status

from ._support import ALICE, BOB, WAIT, asgi_stream, open_app, serve

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
async def test_another_scopes_event_stream_is_an_unknown_ids_and_holds_nothing_of_it(
    stranger: dict[str, str], cid: str
) -> None:
    async with open_app() as env:
        await _alice_conversations(env)
        async with asgi_stream(env.app, f"/conversations/{cid}/events", headers=stranger) as s:
            assert s.status == 200
            snapshot = await s.event()
            assert (snapshot.id, snapshot.event) == (0, "StatusChanged")
            assert snapshot.data["status"] == "not_running"
            assert snapshot.data["interrupt"] is None
            # Neither a subscriber nor a viewer of alice's conversation.
            assert env.sup.subscriber_count(cid) == 0
            assert env.sup.viewer_count(cid) == 0


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


# -- the same answer, byte for byte, over a real server -----------------------------

MINE = "alices-own-42"  # alice's conversation
NOBODYS = "nobody-uses-7"  # an id nobody ever used
PING = b": ping\n\n"


def same_modulo_id(data: bytes, cid: str) -> bytes:
    """``data`` with the conversation id and the snapshot's clock reading masked."""
    data = re.sub(rb'"at":"[^"]*"', b'"at":"<at>"', data)
    return data.replace(cid.encode(), b"<cid>")


class RawStream:
    """The raw bytes of one streamed answer, read on demand."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.data = b""
        self._chunks = response.aiter_raw()

    async def until(self, done: Callable[[bytes], bool], timeout: float = WAIT) -> bytes:
        with anyio.fail_after(timeout):
            while not done(self.data):
                self.data += await anext(self._chunks)
        return self.data

    def headers(self) -> list[tuple[str, str]]:
        # uvicorn's clock reading is the one header that may differ.
        return [(k, v) for k, v in self.response.headers.multi_items() if k != "date"]


@asynccontextmanager
async def raw_stream(
    client: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> AsyncIterator[RawStream]:
    async with client.stream("GET", path, headers=headers) as response:
        yield RawStream(response)


def pings_after(mark: int) -> Callable[[bytes], bool]:
    """True once two heartbeats came after byte ``mark``: the stream was quiet in between."""
    return lambda data: data[mark:].count(PING) >= 2


RESUMES = [
    pytest.param({}, id="fresh"),
    pytest.param({"Last-Event-ID": "3"}, id="last-event-id"),
    pytest.param({"Last-Event-ID": "0"}, id="after-0"),
]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn runs on asyncio
@pytest.mark.parametrize("resume", RESUMES)
@pytest.mark.parametrize("alices", ["live", "stored"])
async def test_a_strangers_event_stream_is_byte_for_byte_an_unknown_ids_and_stays_silent(
    resume: dict[str, str], alices: str
) -> None:
    async with (
        open_app(heartbeat=0.1) as env,
        serve(env.app) as url,
        httpx.AsyncClient(base_url=url, timeout=WAIT) as client,
    ):
        # Alice's conversation has history, a pending interrupt, and (live) a session.
        await env.send(MINE, "first words")
        await wait_for_status(env.sup, MINE, Status.IDLE, scope="alice")
        await env.send(MINE, "interrupt please")
        await wait_for_status(env.sup, MINE, Status.INTERRUPTED, scope="alice")
        if alices == "stored":
            assert (await client.delete(f"/conversations/{MINE}", headers=ALICE)).is_success

        bob = {**BOB, **resume}
        async with (
            raw_stream(client, f"/conversations/{MINE}/events", bob) as strangers,
            raw_stream(client, f"/conversations/{NOBODYS}/events", bob) as unknown,
        ):
            assert strangers.response.status_code == unknown.response.status_code == 200
            assert strangers.headers() == unknown.headers()
            # Everything up to the first heartbeat: retry, then the snapshot (if any).
            first = await strangers.until(lambda data: PING in data)
            expected = await unknown.until(lambda data: PING in data)
            first = first[: first.index(PING)]
            expected = expected[: expected.index(PING)]
            assert same_modulo_id(first, MINE) == same_modulo_id(expected, NOBODYS)
            assert b"interrupt" not in first or b'"interrupt":null' in first

            # The owner answers, talks, gets replies: the stranger hears none of it.
            mark = len(strangers.data)
            answered = await client.post(
                f"/conversations/{MINE}/resume", json={"answer": "yes"}, headers=ALICE
            )
            assert answered.status_code == 202
            await wait_for_status(env.sup, MINE, Status.IDLE, scope="alice")
            assert (await env.send(MINE, "more words")).status_code == 202
            await wait_for_status(env.sup, MINE, Status.IDLE, scope="alice")
            assert len(env.agent.turns) == 3
            rest = await strangers.until(pings_after(mark))
            assert rest[mark:].replace(PING, b"") == b""
            assert unknown.data[len(expected) :].replace(PING, b"") == b""
            assert env.sup.subscriber_count(MINE) == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_id_someone_else_creates_while_a_stranger_waits_is_never_shown_to_them() -> None:
    async with (
        open_app(heartbeat=0.1) as env,
        serve(env.app) as url,
        httpx.AsyncClient(base_url=url, timeout=WAIT) as client,
        raw_stream(client, f"/conversations/{MINE}/events", BOB) as waiting,
        raw_stream(client, f"/conversations/{NOBODYS}/events", BOB) as unknown,
    ):
        await waiting.until(lambda data: PING in data)
        await unknown.until(lambda data: PING in data)
        mark = len(waiting.data)
        # Alice takes the id bob was waiting on, and talks in it.
        assert (await env.send(MINE, "hello")).status_code == 202
        await wait_for_status(env.sup, MINE, Status.IDLE, scope="alice")
        assert (await env.send(MINE, "again")).status_code == 202
        await wait_for_status(env.sup, MINE, Status.IDLE, scope="alice")
        # Bob's stream goes on exactly as the one on an unused id: heartbeats only.
        rest = await waiting.until(pings_after(mark))
        assert rest[mark:].replace(PING, b"") == b""
        assert same_modulo_id(waiting.data.replace(PING, b""), MINE) == same_modulo_id(
            unknown.data.replace(PING, b""), NOBODYS
        )
        assert env.sup.subscriber_count(MINE) == 0
        assert env.sup.viewer_count(MINE) == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_strangers_ai_sdk_resume_stream_is_an_unknown_ids_204() -> None:
    async with (
        open_app() as env,
        serve(env.app) as url,
        httpx.AsyncClient(base_url=url, timeout=WAIT) as client,
    ):
        assert (await env.send(MINE, "slow please")).status_code == 202
        with anyio.fail_after(WAIT):
            await env.agent.started_slow.wait()
        try:
            answers = {}
            for who, cid in (("owner", MINE), ("stranger", MINE), ("unknown", NOBODYS)):
                headers = ALICE if who == "owner" else BOB
                async with raw_stream(client, f"/ai-sdk/chat/{cid}/stream", headers) as answer:
                    body = b""
                    if answer.response.status_code != 200:  # the owner's stream goes on
                        body = await answer.response.aread()
                    answers[who] = (answer.response.status_code, answer.headers(), body)
            assert answers["owner"][0] == 200
            assert answers["stranger"] == answers["unknown"]
            assert answers["stranger"][0] == 204
        finally:
            env.agent.release()


# -- the same work: an id's owner is not told by how long the answer takes ----------


class CountingStore(FlakyStore):
    """Counts the store reads, the part of an answer's time that depends on the id."""

    def __init__(self) -> None:
        super().__init__(MemoryStore())
        self.loads = 0

    async def load(self, conversation_id: str) -> Any:
        self.loads += 1
        return await super().load(conversation_id)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        *ROUTES[1:],
        ("GET", "/conversations/{cid}/events", None),
        ("HEAD", "/conversations/{cid}/events", None),
        ("GET", "/ai-sdk/chat/{cid}/stream", None),
    ],
)
async def test_a_strangers_id_costs_the_store_reads_of_an_unknown_one(
    method: str, path: str, body: dict[str, Any] | None
) -> None:
    store = CountingStore()
    async with open_app(store=store) as env:
        await _alice_conversations(env)
        reads: dict[str, int] = {}
        answers: dict[str, tuple[int, Any]] = {}
        for cid in ("live", "stored", "nobody"):
            before = store.loads
            if method == "GET" and path.endswith("/events"):
                async with asgi_stream(env.app, path.format(cid=cid), headers=BOB) as stream:
                    answers[cid] = (stream.status, (await stream.event()).data["status"])
                    reads[cid] = store.loads - before
                continue
            response = await env.client.request(
                method, path.format(cid=cid), json=body, headers=BOB
            )
            reads[cid] = store.loads - before
            text = response.text.replace(repr(cid), "<cid>")
            answers[cid] = (response.status_code, text)
        assert answers["live"] == answers["stored"] == answers["nobody"]
        assert reads["live"] == reads["stored"] == reads["nobody"], reads


def _ai_sdk_answer(cid: str) -> dict[str, Any]:
    """An approval for a tool call: it needs the conversation, and never creates it."""
    part = {
        "type": "tool-delete",
        "toolCallId": "call-1",
        "state": "approval-responded",
        "approval": {"approved": True},
    }
    return {"id": cid, "messages": [{"id": "m-1", "role": "assistant", "parts": [part]}]}


def _ag_ui_answer(cid: str) -> dict[str, Any]:
    resume = [{"interruptId": "call-1", "status": "resolved", "payload": True}]
    return {
        "threadId": cid,
        "runId": "run-1",
        "messages": [],
        "resume": resume,
        "state": None,
        "tools": [],
        "context": [],
        "forwardedProps": None,
    }


@pytest.mark.parametrize(
    ("path", "body"), [("/ai-sdk/chat", _ai_sdk_answer), ("/ag-ui", _ag_ui_answer)]
)
async def test_an_answer_to_a_strangers_conversation_is_an_unknown_ids_404(
    path: str, body: Callable[[str], dict[str, Any]]
) -> None:
    store = CountingStore()
    async with open_app(store=store) as env:
        await _alice_conversations(env)
        answers: dict[str, tuple[int, str, int]] = {}
        for cid in ("live", "stored", "nobody"):
            before = store.loads
            response = await env.client.post(path, json=body(cid), headers=BOB)
            text = response.text.replace(repr(cid), "<cid>")
            answers[cid] = (response.status_code, text, store.loads - before)
        assert answers["live"] == answers["stored"] == answers["nobody"]
        assert answers["nobody"][:2] == (
            404,
            '{"error":"NotFound","detail":"conversation <cid> not found"}',
        )
        assert env.agent.answers == []
