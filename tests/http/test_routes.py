"""Every route of the HTTP table answers with the body and status the design gives."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest
from fastapi import FastAPI

from sessionvisor import Message, SessionSupervisor, Status
from sessionvisor.http import create_app
from sessionvisor.testing import ScriptedAgent, wait_for_status, wait_until

from ._support import ALICE, BOB, WAIT, open_app, scripted_router

pytestmark = pytest.mark.anyio


async def test_post_message_answers_202_and_the_reply_lands_in_the_history() -> None:
    async with open_app() as env:
        response = await env.send("c-1", "hello")
        assert response.status_code == 202
        assert response.json() == {
            "conversation_id": "c-1",
            "agent_id": "conversation-c-1",
            "queued": False,
            "started": True,
        }
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")

        history = await env.client.get("/conversations/c-1", headers=ALICE)
        assert history.status_code == 200
        body = history.json()
        assert set(body) == {"conversation_id", "status", "messages", "interrupt"}
        assert body["conversation_id"] == "c-1"
        assert body["status"] == "idle"
        assert body["interrupt"] is None
        assert [(m["role"], m["content"]) for m in body["messages"]] == [
            ("user", "hello"),
            ("assistant", "echo: hello"),
        ]
        assert all({"id", "created_at", "metadata"} <= set(m) for m in body["messages"])

        again = await env.send("c-1", "more")
        assert again.json()["started"] is False


async def test_a_message_sent_while_a_turn_runs_is_queued_then_answered() -> None:
    async with open_app() as env:
        await env.send("c-1", "slow one")
        with anyio.fail_after(WAIT):
            await env.agent.started_slow.wait()
        second = await env.send("c-1", "two")
        assert second.status_code == 202
        assert second.json()["queued"] is True
        assert second.json()["started"] is False

        during = (await env.client.get("/conversations/c-1", headers=ALICE)).json()
        assert during["status"] == "running"
        assert [(m["content"], m.get("queued", False)) for m in during["messages"]] == [
            ("slow one", False),
            ("two", True),
        ]

        env.agent.release()
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        after = (await env.client.get("/conversations/c-1", headers=ALICE)).json()
        assert [m["content"] for m in after["messages"]] == [
            "slow one",
            "echo: slow one",
            "two",
            "echo: two",
        ]
        assert not any(m.get("queued") for m in after["messages"])


async def test_an_answer_naming_an_interrupt_no_longer_pending_is_a_409() -> None:
    async with open_app() as env:
        await env.send("c-1", "interrupt me")
        await wait_for_status(env.sup, "c-1", Status.INTERRUPTED, scope="alice")
        pending = (await env.client.get("/conversations/c-1", headers=ALICE)).json()
        first = pending["interrupt"]["id"]
        answered = await env.client.post(
            "/conversations/c-1/resume",
            json={"answer": {"approved": True}, "interrupt_id": first},
            headers=ALICE,
        )
        assert answered.status_code == 202
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        await env.send("c-1", "interrupt me")  # the same question once more
        await wait_for_status(env.sup, "c-1", Status.INTERRUPTED, scope="alice")

        replayed = await env.client.post(
            "/conversations/c-1/resume",
            json={"answer": {"approved": True}, "interrupt_id": first},
            headers=ALICE,
        )
        assert replayed.status_code == 409
        assert replayed.json()["error"] == "InvalidStatus"
        again = (await env.client.get("/conversations/c-1", headers=ALICE)).json()
        assert again["status"] == "interrupted" and again["interrupt"]["id"] != first


async def test_resume_answers_the_interrupt_with_202() -> None:
    async with open_app() as env:
        await env.send("c-1", "interrupt me")
        await wait_for_status(env.sup, "c-1", Status.INTERRUPTED, scope="alice")
        pending = (await env.client.get("/conversations/c-1", headers=ALICE)).json()
        assert pending["status"] == "interrupted"
        assert pending["interrupt"].pop("id").startswith("i-")
        assert pending["interrupt"] == {
            "kind": "question",
            "data": {"question": "approve 'interrupt me'?"},
        }

        response = await env.client.post(
            "/conversations/c-1/resume", json={"answer": {"approved": True}}, headers=ALICE
        )
        assert response.status_code == 202
        assert response.json() == {"conversation_id": "c-1", "status": "running"}
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        assert env.agent.answers == [{"approved": True}]
        done = (await env.client.get("/conversations/c-1", headers=ALICE)).json()
        assert done["interrupt"] is None
        assert done["messages"][-1]["content"] == "resumed with {'approved': True}"


async def test_resume_wakes_a_stopped_conversation_from_the_store() -> None:
    async with open_app() as env:
        await env.send("c-1", "interrupt me")
        await wait_for_status(env.sup, "c-1", Status.INTERRUPTED, scope="alice")
        assert (await env.client.delete("/conversations/c-1", headers=ALICE)).json() == {
            "result": "stopped"
        }
        stored = (await env.client.get("/conversations/c-1", headers=ALICE)).json()
        assert stored["status"] == "not_running"
        assert stored["interrupt"]["kind"] == "question"

        response = await env.client.post(
            "/conversations/c-1/resume", json={"answer": "yes"}, headers=ALICE
        )
        assert response.status_code == 202
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        assert env.agent.answers == ["yes"]


async def test_dismiss_clears_a_notice_with_200() -> None:
    async with open_app() as env:
        await env.send("c-1", "notice this")
        await wait_for_status(env.sup, "c-1", Status.INTERRUPTED, scope="alice")
        response = await env.client.post("/conversations/c-1/dismiss", headers=ALICE)
        assert response.status_code == 200
        assert response.json() == {"conversation_id": "c-1", "status": "idle"}


async def test_cancel_ends_the_running_turn_with_200() -> None:
    async with open_app() as env:
        await env.send("c-1", "slow")
        with anyio.fail_after(WAIT):
            await env.agent.started_slow.wait()
        response = await env.client.post("/conversations/c-1/cancel", headers=ALICE)
        assert response.status_code == 200
        assert response.json() == {"conversation_id": "c-1", "status": "cancelled"}


async def test_delete_stops_the_session_and_the_history_stays_readable() -> None:
    async with open_app() as env:
        await env.send("c-1", "hello")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        first = await env.client.delete("/conversations/c-1", headers=ALICE)
        assert first.status_code == 200
        assert first.json() == {"result": "stopped"}
        assert await env.sup.status("c-1", scope="alice") == Status.NOT_RUNNING

        second = await env.client.delete("/conversations/c-1", headers=ALICE)
        assert second.json() == {"result": "not_running"}

        stored = (await env.client.get("/conversations/c-1", headers=ALICE)).json()
        assert stored["status"] == "not_running"
        assert [m["content"] for m in stored["messages"]] == ["hello", "echo: hello"]


async def test_delete_with_purge_deletes_the_stored_conversation() -> None:
    async with open_app() as env:
        await env.send("c-1", "hello")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        response = await env.client.delete("/conversations/c-1?purge=true", headers=ALICE)
        assert response.json() == {"result": "stopped"}
        assert await env.sup.store.load("c-1") is None
        assert (await env.client.get("/conversations/c-1", headers=ALICE)).status_code == 404
        assert (await env.client.delete("/conversations/c-1", headers=ALICE)).status_code == 404


async def test_sessions_lists_only_the_callers_own_running_sessions() -> None:
    async with open_app() as env:
        await env.send("a-1", "hi", headers=ALICE)
        await env.send("a-2", "hi", headers=ALICE)
        await env.send("b-1", "hi", headers=BOB)
        await env.send("open-1", "hi", headers={})
        for cid, scope in [("a-1", "alice"), ("a-2", "alice"), ("b-1", "bob"), ("open-1", None)]:
            await wait_for_status(env.sup, cid, Status.IDLE, scope=scope)

        alice = (await env.client.get("/sessions", headers=ALICE)).json()
        assert sorted(s["conversation_id"] for s in alice["sessions"]) == ["a-1", "a-2"]
        entry = alice["sessions"][0]
        assert set(entry) == {
            "conversation_id",
            "agent_id",
            "status",
            "restarts",
            "last_activity_at",
        }
        assert entry["status"] == "idle"
        assert entry["restarts"] == 0
        assert entry["last_activity_at"].endswith("+00:00")
        bob = (await env.client.get("/sessions", headers=BOB)).json()
        assert [s["conversation_id"] for s in bob["sessions"]] == ["b-1"]
        anonymous = (await env.client.get("/sessions")).json()
        assert [s["conversation_id"] for s in anonymous["sessions"]] == ["open-1"]

        await env.client.delete("/conversations/a-1", headers=ALICE)
        alice = (await env.client.get("/sessions", headers=ALICE)).json()
        assert [s["conversation_id"] for s in alice["sessions"]] == ["a-2"]


async def test_history_shows_the_display_copy_of_a_preprocessed_message() -> None:
    def preprocess(message: Message, ctx: Any) -> tuple[Message, Message]:
        display = Message(role="user", content="[card number hidden]")
        model = Message(role="user", content=f"{message.text()} (redacted for display)")
        return display, model

    async with open_app(supervisor_opts={"message_preprocessor": preprocess}) as env:
        await env.send("c-1", "my card is 4111")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        body = (await env.client.get("/conversations/c-1", headers=ALICE)).json()
        assert body["messages"][0]["content"] == "[card number hidden]"
        assert "4111" not in str(body["messages"][0])


async def test_message_parts_are_accepted() -> None:
    async with open_app() as env:
        parts = [{"type": "text", "text": "hello "}, {"type": "text", "text": "parts"}]
        assert (await env.send("c-1", parts)).status_code == 202
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        body = (await env.client.get("/conversations/c-1", headers=ALICE)).json()
        assert body["messages"][0]["content"] == parts
        assert body["messages"][1]["content"] == "echo: hello parts"


async def test_healthz_and_readyz_answer_200_while_serving() -> None:
    async with open_app() as env:
        health = await env.client.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        ready = await env.client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_readyz_answers_503_before_start_and_while_draining() -> None:
    async with open_app(enter=False) as env:
        before = await env.client.get("/readyz")
        assert before.status_code == 503
        assert before.json()["error"] == "RegistryUnavailable"
        refused_early = await env.send("c-0", "hello")
        assert refused_early.status_code == 503

        leave = anyio.Event()

        async def run_supervisor(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            async with env.sup:
                task_status.started()
                await leave.wait()

        async with anyio.create_task_group() as tg:
            await tg.start(run_supervisor)
            await env.send("c-1", "slow")
            with anyio.fail_after(WAIT):
                await env.agent.started_slow.wait()
            leave.set()  # the supervisor drains, waiting for the slow turn
            await wait_until(lambda: env.sup.draining, timeout=WAIT)
            ready = await env.client.get("/readyz")
            refused = await env.send("c-2", "hello")
            env.agent.release()
        assert ready.status_code == 503
        assert ready.json() == {
            "error": "RegistryUnavailable",
            "detail": "the session supervisor is draining",
        }
        assert refused.status_code == 503
        assert refused.json()["error"] == "RegistryUnavailable"
        assert (await env.client.get("/healthz")).status_code == 200


async def test_the_page_is_served_without_external_resources() -> None:
    async with open_app() as env:
        response = await env.client.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        html = response.text
        assert "EventSource" in html
        assert "__SESSIONVISOR_BASE__" not in html
        assert 'const BASE = "";' in html
        assert "http://" not in html and "https://" not in html  # no CDN, nothing fetched


async def test_the_page_can_be_left_out() -> None:
    async with open_app(page=False) as env:
        response = await env.client.get("/")
        assert response.status_code == 404
        assert response.json()["error"] == "NotFound"


async def test_the_lifespan_enters_and_leaves_a_supervisor_nobody_entered() -> None:
    agent = ScriptedAgent()
    sup = SessionSupervisor(scripted_router(agent))
    app = create_app(sup)
    async with app.router.lifespan_context(app):
        assert sup.phase == "open"
        assert app.state.supervisor is sup
    assert sup.phase == "closed"


async def test_the_lifespan_leaves_an_entered_supervisor_alone() -> None:
    sup = SessionSupervisor(scripted_router(ScriptedAgent()))
    app = create_app(sup)
    async with sup:
        async with app.router.lifespan_context(app):
            pass
        assert sup.phase == "open"


async def test_the_app_mounts_inside_fastapi() -> None:
    import httpx

    agent = ScriptedAgent()
    sup = SessionSupervisor(scripted_router(agent))
    chat = create_app(sup)
    parent = FastAPI(lifespan=lambda _app: chat.router.lifespan_context(chat))

    @parent.get("/api/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    parent.mount("/chat", chat)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(parent.router.lifespan_context(parent))
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=parent), base_url="http://t")
        )
        assert sup.phase == "open"
        assert (await client.get("/api/hello")).json() == {"hello": "world"}
        sent = await client.post(
            "/chat/conversations/c-1/messages", json={"content": "hi"}, headers=ALICE
        )
        assert sent.status_code == 202
        await wait_for_status(sup, "c-1", Status.IDLE, scope="alice")
        history = await client.get("/chat/conversations/c-1", headers=ALICE)
        assert [m["content"] for m in history.json()["messages"]] == ["hi", "echo: hi"]
        sessions = (await client.get("/chat/sessions", headers=ALICE)).json()
        assert [s["conversation_id"] for s in sessions["sessions"]] == ["c-1"]
        page = await client.get("/chat/")
        assert 'const BASE = "/chat";' in page.text
        missing = await client.get("/chat/conversations/nope", headers=ALICE)
        assert missing.status_code == 404
        assert missing.json()["error"] == "NotFound"
    assert sup.phase == "closed"


async def test_an_async_scope_function_is_awaited() -> None:
    async def scope_from_request(request: Any) -> dict[str, str]:
        await anyio.sleep(0)
        return {"owner": request.headers.get("authorization", "").removeprefix("Bearer ")}

    async with open_app(scope_from_request=scope_from_request) as env:
        token = {"Authorization": "Bearer carol"}
        assert (await env.send("c-1", "hi", headers=token)).status_code == 202
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope={"owner": "carol"})
        sessions = (await env.client.get("/sessions", headers=token)).json()["sessions"]
        assert [s["conversation_id"] for s in sessions] == ["c-1"]
        other = await env.client.get("/conversations/c-1", headers={"Authorization": "Bearer x"})
        assert other.status_code == 404


async def test_head_on_the_event_stream_checks_access_and_sends_no_stream() -> None:
    async with open_app() as env:
        await env.send("c-1", "hi")
        response = await env.client.head("/conversations/c-1/events", headers=ALICE)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        # Another owner's conversation answers as an unknown id does (no existence oracle).
        other = await env.client.head("/conversations/c-1/events", headers=BOB)
        unknown = await env.client.head("/conversations/c-2/events", headers=BOB)
        assert other.status_code == unknown.status_code == 200
        assert other.headers == unknown.headers
        assert env.sup.viewer_count("c-1") == 0


async def test_a_null_answer_is_an_answer_too() -> None:
    async with open_app() as env:
        await env.send("c-1", "interrupt me")
        await wait_for_status(env.sup, "c-1", Status.INTERRUPTED, scope="alice")
        await env.client.delete("/conversations/c-1", headers=ALICE)
        response = await env.client.post(
            "/conversations/c-1/resume", json={"answer": None}, headers=ALICE
        )
        assert response.status_code == 202
        assert response.json()["status"] == "running"
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        assert env.agent.answers == [None]


async def test_a_send_retried_with_the_same_id_is_answered_the_same_and_stored_once() -> None:
    async with open_app() as env:
        first = await env.client.post(
            "/conversations/c-id/messages", json={"content": "hi", "id": "m-1"}, headers=ALICE
        )
        await wait_for_status(env.sup, "c-id", Status.IDLE, scope="alice")
        again = await env.client.post(
            "/conversations/c-id/messages", json={"content": "hi", "id": "m-1"}, headers=ALICE
        )
        assert first.status_code == again.status_code == 202
        assert again.json()["queued"] is False
        history = (await env.client.get("/conversations/c-id", headers=ALICE)).json()["messages"]
        assert [m["content"] for m in history].count("hi") == 1


@pytest.mark.parametrize("bad", ["", "x" * 129, "a\nb", 42])
async def test_a_bad_message_id_is_a_400_naming_it(bad: object) -> None:
    async with open_app() as env:
        response = await env.client.post(
            "/conversations/c-id/messages", json={"content": "hi", "id": bad}, headers=ALICE
        )
        assert response.status_code == 400
        assert "id" in response.json()["detail"]
        assert await env.sup.status("c-id", scope="alice") is Status.NOT_RUNNING


# -- cross-site requests (issue 17, item 8) -------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/admin"])
async def test_the_pages_cannot_be_framed_and_run_only_their_own_scripts(path: str) -> None:
    import base64
    import hashlib
    import re

    async with open_app() as env:
        response = await env.client.get(path)
    assert response.status_code == 200
    assert response.headers["x-frame-options"] == "DENY"
    policy = {
        name: values
        for name, _, values in (
            d.strip().partition(" ") for d in response.headers["content-security-policy"].split(";")
        )
    }
    assert policy["frame-ancestors"] == "'none'"
    assert "'unsafe-inline'" not in policy["script-src"]
    # Each inline script of the page, as served, is allowed by its hash.
    scripts = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    assert scripts
    for script in scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy["script-src"].split()


async def test_the_user_query_parameter_names_the_caller_of_streams_only() -> None:
    from sessionvisor.http import header_or_query_scope

    from ._support import asgi_stream

    async with open_app(scope_from_request=header_or_query_scope) as env:
        await env.send("c-1", "slow one")
        with anyio.fail_after(WAIT):
            await env.agent.started_slow.wait()
        # A form on another site can post here, but ?user= does not make it alice.
        cancel = await env.client.post("/conversations/c-1/cancel?user=alice")
        assert cancel.status_code == 404, cancel.text
        send = await env.client.post(
            "/conversations/c-1/messages?user=alice", json={"content": "more"}
        )
        assert send.status_code == 404, send.text
        history = await env.client.get("/conversations/c-1?user=alice")
        assert history.status_code == 404, history.text
        assert await env.sup.status("c-1", scope="alice") == Status.RUNNING
        # EventSource cannot send headers: on the event stream the parameter counts.
        async with asgi_stream(
            env.app, "/conversations/c-1/events", headers={}, query="user=alice"
        ) as stream:
            assert stream.status == 200
            first = await stream.event()
            assert first.data["status"] == "running"
        env.agent.release()
