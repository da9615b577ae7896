"""The app on a real uvicorn server, over real sockets (asyncio only: uvicorn runs on asyncio).

The same behaviours run on both backends in ``test_events.py`` through the
ASGI interface; these make sure nothing is lost between uvicorn and the app:
streaming, reconnects, disconnects, heartbeats, mounting and shutdown.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from sessionvisor import SessionSupervisor, Status
from sessionvisor.http import create_app
from sessionvisor.testing import ScriptedAgent, wait_for_status, wait_until

from ._support import ALICE, http_stream, open_app, scripted_router, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def is_idle(frame: Any) -> bool:
    return frame.event == "StatusChanged" and frame.data["status"] == "idle"


async def test_events_stream_over_a_real_socket_and_a_reconnect_resumes() -> None:
    async with (
        open_app() as env,
        serve(env.app) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        async with http_stream(client, "/conversations/c-1/events") as stream:
            assert (await stream.event()).data["status"] == "not_running"
            sent = await client.post(
                "/conversations/c-1/messages", json={"content": "hello"}, headers=ALICE
            )
            assert sent.status_code == 202
            frames = await stream.until(is_idle)
            frames += await stream.until(is_idle)
        assert [f.id for f in frames] == list(range(1, len(frames) + 1))
        last = frames[3].id

        async with http_stream(
            client, "/conversations/c-1/events", headers={**ALICE, "Last-Event-ID": str(last)}
        ) as again:
            replayed = [await again.event() for _ in frames[4:]]
            assert [f.id for f in replayed] == [f.id for f in frames[4:]]
            assert [f.data for f in replayed] == [f.data for f in frames[4:]]
            await client.post(
                "/conversations/c-1/messages", json={"content": "more"}, headers=ALICE
            )
            live = await again.until(is_idle)
            assert live[0].id == frames[-1].id + 1


async def test_a_closed_connection_is_unsubscribed_at_once() -> None:
    async with (
        open_app(heartbeat=None) as env,
        serve(env.app) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        await client.post("/conversations/c-1/messages", json={"content": "hi"}, headers=ALICE)
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        async with http_stream(client, "/conversations/c-1/events") as stream:
            await stream.event()
            assert env.sup.subscriber_count("c-1") == 1
            assert env.sup.viewer_count("c-1") == 1
        took = await wait_until(
            lambda: env.sup.subscriber_count("c-1") == 0 and env.sup.viewer_count("c-1") == 0,
            timeout=2,
            interval=0.005,
        )
        assert took < 1.0


async def test_heartbeats_reach_the_client() -> None:
    async with (
        open_app(heartbeat=0.05) as env,
        serve(env.app) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        http_stream(client, "/conversations/c-1/events") as stream,
    ):
        await stream.event()
        comments: list[str] = []
        while len(comments) < 2:
            frame = await stream.frame()
            if frame.comment is not None:
                comments.append(frame.comment)
        assert comments == ["ping", "ping"]


async def test_the_server_lifespan_enters_the_supervisor_and_shutdown_ends_streams() -> None:
    sup = SessionSupervisor(scripted_router(ScriptedAgent(stream=True)))
    app = create_app(sup, heartbeat=None)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert sup.phase == "open"
        assert (await client.get("/readyz")).status_code == 200
        async with http_stream(client, "/conversations/c-1/events") as stream:
            await stream.event()
            await client.post("/conversations/c-1/messages", json={"content": "hi"}, headers=ALICE)
            await stream.until(is_idle)
            started = time.monotonic()
    # Leaving `serve` closed the streams, shut uvicorn down and drained the supervisor.
    assert sup.phase == "closed"
    assert time.monotonic() - started < 5.0


async def test_mounted_in_fastapi_the_stream_and_the_page_work() -> None:
    sup = SessionSupervisor(scripted_router(ScriptedAgent(stream=True)))
    chat = create_app(sup)
    parent = FastAPI(lifespan=lambda _app: chat.router.lifespan_context(chat))
    parent.mount("/chat", chat)
    async with serve(parent) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        async with http_stream(client, "/chat/conversations/c-1/events") as stream:
            await stream.event()
            sent = await client.post(
                "/chat/conversations/c-1/messages", json={"content": "hi"}, headers=ALICE
            )
            assert sent.status_code == 202
            frames = await stream.until(is_idle)
            frames += await stream.until(is_idle)
            assert frames[-2].data["message"]["content"] == "echo: hi"
        page = await client.get("/chat/")
        assert 'const BASE = "/chat";' in page.text
    assert sup.phase == "closed"
