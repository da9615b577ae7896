"""Every error answers ``{"error", "detail"}`` with the status the design maps it to.

Client mistakes are 4xx and never a 500 or a hang; internal failures are a
500 that says nothing but "internal error" while the log has the traceback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
import structlog
from pydantic import BaseModel

from sessionvisor import (
    CorruptStateError,
    FactoryPermissionError,
    FactoryValidationError,
    KeyedRouter,
    MemoryStore,
    SingleRouter,
    Status,
)
from sessionvisor.testing import ScriptedAgent, wait_for_status

from ._support import ALICE, open_app

pytestmark = pytest.mark.anyio

JSON = {**ALICE, "Content-Type": "application/json"}


def assert_error(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# -- malformed and oversized bodies ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param(b"{not json", "InvalidJSON", id="broken-json"),
        pytest.param(b"\xff\xfe{}", "InvalidJSON", id="not-utf8"),
        pytest.param(b'{"content": NaN}', "InvalidJSON", id="nan"),
        pytest.param(b'{"content": "x", "request_opts": {"t": Infinity}}', "InvalidJSON", id="inf"),
        pytest.param(b"[1, 2]", "ValidationError", id="array-body"),
        pytest.param(b'"hello"', "ValidationError", id="string-body"),
        pytest.param(b"{}", "ValidationError", id="no-content"),
        pytest.param(b'{"content": 42}', "ValidationError", id="content-int"),
        pytest.param(b'{"content": null}', "ValidationError", id="content-null"),
        pytest.param(b'{"content": [{"text": "no type"}]}', "ValidationError", id="part-no-type"),
        pytest.param(b'{"content": ["text"]}', "ValidationError", id="part-not-object"),
        pytest.param(b'{"content": "x", "request_opts": []}', "ValidationError", id="opts-list"),
        pytest.param(b'{"content": "x", "extra": 1}', "ValidationError", id="unknown-key"),
        pytest.param(
            b'{"content": "x", "request_opts": {"scope": "bob"}}',
            "ValidationError",
            id="opts-scope",
        ),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "InvalidJSON", id="deep-nesting"),
        pytest.param(b"", "InvalidBody", id="empty"),
    ],
)
async def test_a_malformed_message_body_is_a_400(raw: bytes, error: str) -> None:
    async with open_app() as env:
        response = await env.client.post("/conversations/c-1/messages", content=raw, headers=JSON)
        body = assert_error(response, 400, error)
        if error == "ValidationError" and raw.startswith(b"{"):
            assert body["errors"] and {"type", "loc", "msg"} <= set(body["errors"][0])
        assert await env.sup.store.load("c-1") is None


async def test_a_validation_error_names_the_field() -> None:
    async with open_app() as env:
        response = await env.client.post(
            "/conversations/c-1/messages", json={"content": 42}, headers=ALICE
        )
        body = assert_error(response, 400, "ValidationError")
        assert any(e["loc"][0] == "content" for e in body["errors"])
        assert "42" not in str(body["errors"])  # inputs are left out of the answer


async def test_a_body_that_is_not_declared_json_is_a_415() -> None:
    async with open_app() as env:
        response = await env.client.post(
            "/conversations/c-1/messages",
            content=b'{"content": "hi"}',
            headers={**ALICE, "Content-Type": "text/plain"},
        )
        assert_error(response, 415, "UnsupportedMediaType")
        form = await env.client.post(
            "/conversations/c-1/messages", data={"content": "hi"}, headers=ALICE
        )
        assert_error(form, 415, "UnsupportedMediaType")


async def test_a_body_over_the_declared_limit_is_a_413_before_reading_it() -> None:
    async with open_app(max_body_bytes=1000) as env:
        response = await env.client.post(
            "/conversations/c-1/messages",
            content=b'{"content": "' + b"x" * 5000 + b'"}',
            headers=JSON,
        )
        assert_error(response, 413, "PayloadTooLarge")
        assert await env.sup.store.load("c-1") is None


async def test_a_streamed_body_is_cut_off_at_the_limit_without_buffering_it() -> None:
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield b'{"content": "'
        for _ in range(100_000):  # 6.4 GB if the server read it all
            pulled += 1
            yield b"x" * 65536

    async with open_app() as env:
        response = await env.client.post(
            "/conversations/c-1/messages", content=endless(), headers=JSON
        )
        assert_error(response, 413, "PayloadTooLarge")
        limit = env.sup.defaults.max_message_bytes + 64 * 1024
        assert pulled * 65536 <= limit + 2 * 65536


async def test_content_over_max_message_bytes_is_a_413() -> None:
    async with open_app(supervisor_opts={"max_message_bytes": 1000}) as env:
        ok = await env.send("c-1", "é" * 400)  # 800 bytes of UTF-8 plus quotes
        assert ok.status_code == 202
        response = await env.send("c-2", "é" * 600)
        body = assert_error(response, 413, "PayloadTooLarge")
        assert "1000" in body["detail"]


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/conversations/" + "x" * 257 + "/messages", "POST"),
        ("/conversations/bad%01id/messages", "POST"),
        ("/conversations/" + "x" * 257, "GET"),
        ("/conversations/bad%7Fid/events", "GET"),
        ("/conversations/bad%01id/resume", "POST"),
        ("/conversations/bad%01id", "DELETE"),
    ],
)
async def test_an_invalid_conversation_id_is_a_400(path: str, method: str) -> None:
    async with open_app() as env:
        response = await env.client.request(
            method, path, json={"content": "hi", "answer": 1}, headers=ALICE
        )
        assert_error(response, 400, "ValidationError")


async def test_bad_query_parameters_are_a_400() -> None:
    async with open_app() as env:
        await env.send("c-1", "hi")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        purge = await env.client.delete("/conversations/c-1?purge=maybe", headers=ALICE)
        assert_error(purge, 400, "ValidationError")
        after = await env.client.get("/conversations/c-1/events?after=-3", headers=ALICE)
        assert_error(after, 400, "ValidationError")
        last = await env.client.get(
            "/conversations/c-1/events", headers={**ALICE, "Last-Event-ID": "abc"}
        )
        assert_error(last, 400, "ValidationError")


async def test_unknown_paths_and_methods_answer_json() -> None:
    async with open_app() as env:
        assert_error(await env.client.get("/nothing/here"), 404, "NotFound")
        assert_error(await env.client.put("/conversations/c-1"), 405, "MethodNotAllowed")


async def test_resume_needs_an_answer() -> None:
    async with open_app() as env:
        await env.send("c-1", "interrupt")
        await wait_for_status(env.sup, "c-1", Status.INTERRUPTED, scope="alice")
        response = await env.client.post("/conversations/c-1/resume", json={}, headers=ALICE)
        assert_error(response, 400, "ValidationError")
        assert await env.sup.status("c-1", scope="alice") == Status.INTERRUPTED


# -- runtime errors ------------------------------------------------------------------


async def test_calls_that_do_not_fit_the_status_are_a_409() -> None:
    async with open_app() as env:
        await env.send("c-1", "hello")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        resume = await env.client.post(
            "/conversations/c-1/resume", json={"answer": 1}, headers=ALICE
        )
        assert_error(resume, 409, "InvalidStatus")
        cancel = await env.client.post("/conversations/c-1/cancel", headers=ALICE)
        assert_error(cancel, 409, "InvalidStatus")
        dismiss = await env.client.post("/conversations/c-1/dismiss", headers=ALICE)
        assert_error(dismiss, 409, "InvalidStatus")

        await env.send("c-1", "interrupt")
        await wait_for_status(env.sup, "c-1", Status.INTERRUPTED, scope="alice")
        question = await env.client.post("/conversations/c-1/dismiss", headers=ALICE)
        assert_error(question, 409, "InvalidStatus")

        await env.client.delete("/conversations/c-1", headers=ALICE)
        stopped = await env.client.post("/conversations/c-1/cancel", headers=ALICE)
        assert_error(stopped, 409, "InvalidStatus")


async def test_a_changed_route_is_a_409() -> None:
    agent = ScriptedAgent()
    router = KeyedRouter(
        lambda scope, cid, opts: opts.get("persona"),
        {"helper": lambda agent_id, config: agent, "pirate": lambda agent_id, config: agent},
        default="helper",
    )
    async with open_app(router, agent=agent) as env:
        first = await env.send("c-1", "hi", request_opts={"persona": "pirate"})
        assert first.status_code == 202
        await env.client.delete("/conversations/c-1", headers=ALICE)
        changed = await env.send("c-1", "hi", request_opts={"persona": "helper"})
        assert_error(changed, 409, "RouteChangedError")


async def test_a_full_queue_is_a_429() -> None:
    async with open_app(supervisor_opts={"max_queued": 1}) as env:
        await env.send("c-1", "slow")
        await env.agent.started_slow.wait()
        assert (await env.send("c-1", "one")).json()["queued"] is True
        response = await env.send("c-1", "two")
        assert_error(response, 429, "QueueFull")
        env.agent.release()


class PersonaConfig(BaseModel):
    persona: Literal["helper", "pirate"]
    scope: Any = None
    conversation_id: str


async def test_a_route_validation_error_is_a_400_with_pydantic_errors() -> None:
    agent = ScriptedAgent()
    router = SingleRouter(lambda agent_id, config: agent, config=PersonaConfig)
    async with open_app(router, agent=agent) as env:
        response = await env.send("c-1", "hi", request_opts={"persona": "robot"})
        body = assert_error(response, 400, "RouteValidationError")
        assert [e["loc"] for e in body["errors"]] == [["persona"]]
        assert body["errors"][0]["input"] == "robot"

        missing = await env.send("c-2", "hi", headers={"X-User": "secret-scope-value"})
        body = assert_error(missing, 400, "RouteValidationError")
        assert "secret-scope-value" not in missing.text  # the trusted scope never leaks


async def test_an_unknown_route_is_a_400() -> None:
    agent = ScriptedAgent()
    router = KeyedRouter(lambda scope, cid, opts: opts.get("persona"), {"a": lambda i, c: agent})
    async with open_app(router, agent=agent) as env:
        response = await env.send("c-1", "hi", request_opts={"persona": "zzz"})
        assert_error(response, 400, "NoRouteError")


async def test_factory_refusals_are_a_400_and_a_403() -> None:
    def factory(agent_id: str, config: dict[str, Any]) -> Any:
        if config.get("kind") == "bad":
            raise FactoryValidationError("kind 'bad' is not offered")
        if config["scope"] != "alice":
            raise FactoryPermissionError("only alice may chat here")
        return ScriptedAgent()

    async with open_app(SingleRouter(factory)) as env:
        bad = await env.send("c-1", "hi", request_opts={"kind": "bad"})
        body = assert_error(bad, 400, "FactoryValidationError")
        assert "kind 'bad' is not offered" in body["detail"]
        refused = await env.send("c-2", "hi", headers={"X-User": "mallory"})
        assert_error(refused, 403, "FactoryPermissionError")


async def test_a_rejected_message_is_a_400() -> None:
    def preprocess(message: Any, ctx: Any) -> Any:
        raise ValueError("no shouting")

    async with open_app(supervisor_opts={"message_preprocessor": preprocess}) as env:
        response = await env.send("c-1", "HELLO")
        body = assert_error(response, 400, "MessageRejected")
        assert "no shouting" in body["detail"]


async def test_an_unentered_supervisor_is_a_503() -> None:
    async with open_app(enter=False) as env:
        assert_error(await env.send("c-1", "hi"), 503, "RegistryUnavailable")
        assert_error(
            await env.client.get("/conversations/c-1", headers=ALICE), 503, "RegistryUnavailable"
        )
        assert_error(await env.client.get("/sessions", headers=ALICE), 503, "RegistryUnavailable")


# -- internal errors -----------------------------------------------------------------

INTERNAL = {"error": "internal", "detail": "internal error"}


def assert_internal(response: Any, logs: list[dict[str, Any]], secret: str) -> None:
    assert response.status_code == 500
    assert response.json() == INTERNAL
    assert secret not in response.text
    [entry] = [e for e in logs if e["event"] == "http_internal_error"]
    assert entry["log_level"] == "error"
    assert secret in entry["error"]
    exc = entry["exc_info"]
    assert isinstance(exc, BaseException) and exc.__traceback__ is not None


async def test_a_factory_contract_error_is_a_500_that_hides_the_details() -> None:
    router = SingleRouter(lambda agent_id, config: "not-an-agent-SECRET")
    async with open_app(router) as env:
        with structlog.testing.capture_logs() as logs:
            response = await env.send("c-1", "hi")
        assert_internal(response, logs, "SECRET")
        assert logs[-1]["exc_info"].__class__.__name__ == "FactoryContractError"


async def test_an_unexpected_exception_is_a_500_that_hides_the_details() -> None:
    def factory(agent_id: str, config: Any) -> Any:
        raise RuntimeError("db password is hunter2")

    async with open_app(SingleRouter(factory)) as env:
        with structlog.testing.capture_logs() as logs:
            response = await env.send("c-1", "hi")
        assert_internal(response, logs, "hunter2")


class CorruptStore(MemoryStore):
    async def load(self, conversation_id: str) -> Any:
        if conversation_id == "broken":
            raise CorruptStateError("conversation 'broken': stored row is garbage XYZZY")
        return await super().load(conversation_id)


async def test_a_corrupt_stored_conversation_is_a_500() -> None:
    async with open_app(store=CorruptStore()) as env:
        with structlog.testing.capture_logs() as logs:
            response = await env.client.get("/conversations/broken", headers=ALICE)
        assert_internal(response, logs, "XYZZY")


async def test_a_failing_scope_function_is_a_500() -> None:
    def scope_from_request(request: Any) -> Any:
        raise KeyError("token store unreachable TOKEN42")

    async with open_app(scope_from_request=scope_from_request) as env:
        with structlog.testing.capture_logs() as logs:
            response = await env.client.get("/sessions")
        assert_internal(response, logs, "TOKEN42")
