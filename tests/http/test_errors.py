"""Every error answers ``{"error", "detail"}`` with the status the design maps it to.

Client mistakes are 4xx and never a 500 or a hang; internal failures are a
500 that says nothing but "internal error" while the log has the traceback.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
import pytest
import structlog
from pydantic import BaseModel

from sessionvisor import (
    CorruptStateError,
    FactoryPermissionError,
    FactoryValidationError,
    KeyedRouter,
    MemoryStore,
    RegistryUnavailable,
    SingleRouter,
    Status,
)
from sessionvisor.testing import FlakyStore, ScriptedAgent, wait_for_status

from ._support import ALICE, BOB, WAIT, open_app

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


# -- input no store can keep (issue 17, items 1 and 4) ------------------------------------
#
# Every JSON route runs its body through the same reader; each case is refused there
# with a typed 400 before anything is started or stored.


def message_body(value: bytes) -> bytes:
    return b'{"content": "hi", "request_opts": {"x": ' + value + b"}}"


def part_body(value: bytes) -> bytes:
    return b'{"content": [{"type": "text", "text": ' + value + b"}]}"


def ai_sdk_body(cid: str, value: bytes) -> bytes:
    part = b'{"type": "text", "text": ' + value + b"}"
    return (
        b'{"id": "'
        + cid.encode()
        + b'", "messages": [{"id": "m-1", "role": "user", "parts": ['
        + part
        + b"]}]}"
    )


def ag_ui_body(cid: str, value: bytes) -> bytes:
    return (
        b'{"threadId": "' + cid.encode() + b'", "runId": "r-1", '
        b'"messages": [{"id": "u-1", "role": "user", "content": ' + value + b"}]}"
    )


def ag_ui_run_id(cid: str, value: bytes) -> bytes:
    return (
        b'{"threadId": "' + cid.encode() + b'", "runId": ' + value + b", "
        b'"messages": [{"id": "u-1", "role": "user", "content": "hi"}]}'
    )


# (the value put into the body, what the answer's detail must mention)
HOSTILE_VALUES = [
    pytest.param(b'"x\\ud800y"', "lone surrogate", id="surrogate-escape"),
    pytest.param(b'"x\xed\xa0\x80y"', "lone surrogate", id="surrogate-raw-bytes"),
    pytest.param(b"1e999", "finite", id="1e999"),
    pytest.param(b"-1e999", "finite", id="minus-1e999"),
    pytest.param(b"NaN", "NaN", id="nan"),
    pytest.param(b"Infinity", "Infinity", id="infinity"),
    pytest.param(b"[" * 70 + b"1" + b"]" * 70, "64 levels", id="deep"),
    pytest.param(b"1" * 1001, "digits", id="huge-int"),
    pytest.param(b'{"\\udfff": 1}', "lone surrogate", id="surrogate-key"),
]

# (route, the body with the value in it); the conversation is always c-h
HOSTILE_ROUTES = [
    pytest.param("/conversations/c-h/messages", message_body, id="messages-opts"),
    pytest.param("/conversations/c-h/messages", part_body, id="messages-part"),
    pytest.param(
        "/conversations/c-h/resume",
        lambda v: b'{"answer": ' + v + b"}",
        id="resume",
    ),
    pytest.param(
        "/conversations/c-h/dismiss",
        lambda v: b'{"request_opts": {"x": ' + v + b"}}",
        id="dismiss",
    ),
    pytest.param("/conversations/c-h/cancel", lambda v: b'{"x": ' + v + b"}", id="cancel"),
    pytest.param("/ai-sdk/chat", lambda v: ai_sdk_body("c-h", v), id="ai-sdk"),
    pytest.param("/ag-ui", lambda v: ag_ui_body("c-h", v), id="ag-ui"),
    pytest.param("/ag-ui", lambda v: ag_ui_run_id("c-h", v), id="ag-ui-run-id"),
]


@pytest.mark.parametrize(("path", "body_with"), HOSTILE_ROUTES)
@pytest.mark.parametrize(("value", "named"), HOSTILE_VALUES)
async def test_json_no_store_can_keep_is_a_typed_400_on_every_route(
    path: str, body_with: Any, value: bytes, named: str
) -> None:
    async with open_app() as env:
        response = await env.client.post(path, content=body_with(value), headers=JSON)
        body = assert_error(response, 400, "InvalidJSON")
        assert named in body["detail"], body
        assert await env.sup.store.load("c-h") is None
        assert not await env.sup.running("c-h")


async def test_a_refused_value_is_named_by_its_path_in_the_body() -> None:
    async with open_app() as env:
        response = await env.client.post(
            "/conversations/c-1/messages", content=message_body(b"[1, 1e999]"), headers=JSON
        )
        body = assert_error(response, 400, "InvalidJSON")
        assert "body['request_opts']['x'][1]" in body["detail"], body


async def test_a_body_nested_64_deep_is_accepted_and_65_is_not() -> None:
    # The body is level 1 and request_opts level 2: the value adds the rest.
    async with open_app() as env:
        ok = await env.client.post(
            "/conversations/c-1/messages",
            content=message_body(b"[" * 62 + b"]" * 62),
            headers=JSON,
        )
        assert ok.status_code == 202, ok.text
        deep = await env.client.post(
            "/conversations/c-2/messages",
            content=message_body(b"[" * 63 + b"]" * 63),
            headers=JSON,
        )
        assert_error(deep, 400, "InvalidJSON")


async def test_a_body_with_too_many_arrays_and_objects_is_a_413_before_parsing() -> None:
    from sessionvisor.http._bodies import MAX_BODY_CONTAINERS

    many = b"[" + b",".join([b"[]"] * MAX_BODY_CONTAINERS) + b"]"
    # Brackets inside strings are text, not structure: this body holds two containers.
    text = b'"' + b"[{" * MAX_BODY_CONTAINERS + b'\\\\"'
    async with open_app() as env:
        response = await env.client.post(
            "/conversations/c-1/messages", content=message_body(many), headers=JSON
        )
        body = assert_error(response, 413, "PayloadTooLarge")
        assert str(MAX_BODY_CONTAINERS) in body["detail"]
        fine = await env.client.post(
            "/conversations/c-2/messages", content=b'{"content": ' + text + b"}", headers=JSON
        )
        assert fine.status_code == 202, fine.text
        deep = b"[" * 100_000 + b"]" * 100_000
        deep_answer = await env.client.post(
            "/conversations/c-3/messages", content=message_body(deep), headers=JSON
        )
        assert "64 levels" in assert_error(deep_answer, 400, "InvalidJSON")["detail"]
        assert await env.sup.store.load("c-1") is None


# -- media types (issue 17, item 8) ---------------------------------------------------------

NOT_JSON = [
    pytest.param("text/plain", id="text-plain"),
    pytest.param("application/x-www-form-urlencoded", id="urlencoded"),
    pytest.param("multipart/form-data; boundary=x", id="multipart"),
]


@pytest.mark.parametrize("content_type", NOT_JSON)
@pytest.mark.parametrize("action", ["cancel", "dismiss"])
async def test_an_empty_form_post_to_cancel_or_dismiss_is_a_415_and_does_nothing(
    content_type: str, action: str
) -> None:
    async with open_app() as env:
        await env.send("c-1", "slow one")
        with anyio.fail_after(WAIT):
            await env.agent.started_slow.wait()
        response = await env.client.post(
            f"/conversations/c-1/{action}",
            content=b"",
            headers={**ALICE, "Content-Type": content_type},
        )
        assert_error(response, 415, "UnsupportedMediaType")
        assert await env.sup.status("c-1", scope="alice") == Status.RUNNING
        env.agent.release()


@pytest.mark.parametrize("action", ["cancel", "dismiss"])
async def test_a_bodiless_post_without_a_content_type_stays_accepted(action: str) -> None:
    async with open_app() as env:
        await env.send("c-1", "hello")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        response = await env.client.post(f"/conversations/c-1/{action}", headers=ALICE)
        assert response.status_code in (200, 409), response.text
        declared = await env.client.post(f"/conversations/c-1/{action}", json={}, headers=ALICE)
        assert declared.status_code == response.status_code, declared.text


@pytest.mark.parametrize(
    "path", ["/conversations/c-1/resume", "/ai-sdk/chat", "/ag-ui", "/conversations/c-1/cancel"]
)
@pytest.mark.parametrize("content_type", NOT_JSON)
async def test_every_json_route_refuses_other_media_types(path: str, content_type: str) -> None:
    async with open_app() as env:
        response = await env.client.post(
            path, content=b'{"answer": 1}', headers={**ALICE, "Content-Type": content_type}
        )
        assert_error(response, 415, "UnsupportedMediaType")


# -- naming and logging (issue 17, item 9) -------------------------------------------------


async def test_the_404_of_the_frontend_routes_names_the_conversation() -> None:
    async with open_app() as env:
        await env.send("c-bob", "mine", headers=BOB)
        chat = await env.client.post(
            "/ai-sdk/chat", content=ai_sdk_body("c-bob", b'"hi"'), headers=JSON
        )
        assert "'c-bob'" in assert_error(chat, 404, "NotFound")["detail"]
        run = await env.client.post("/ag-ui", content=ag_ui_body("c-bob", b'"hi"'), headers=JSON)
        assert "'c-bob'" in assert_error(run, 404, "NotFound")["detail"]


async def test_a_client_that_leaves_mid_body_is_logged_as_a_disconnect() -> None:
    async with open_app() as env:
        sent = 0

        async def receive() -> dict[str, Any]:
            nonlocal sent
            sent += 1
            if sent == 1:
                return {"type": "http.request", "body": b'{"content": "hal', "more_body": True}
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            pass

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/conversations/c-1/messages",
            "raw_path": b"/conversations/c-1/messages",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"x-user", b"alice")],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        with structlog.testing.capture_logs() as logs:
            await env.app(scope, receive, send)
        events = [e["event"] for e in logs]
        assert "http_internal_error" not in events, logs
        [entry] = [e for e in logs if e["event"] == "http_client_disconnected"]
        assert entry["log_level"] == "info"
        assert "exc_info" not in entry
        assert await env.sup.store.load("c-1") is None


# -- a store that cannot save (issue 17, item 3) -------------------------------------------


def test_store_unavailable_is_a_503_with_retry_after() -> None:
    from sessionvisor import StoreUnavailable
    from sessionvisor.http._errors import response_for

    response = response_for(
        StoreUnavailable("conversation 'c-1': not stored; retry it"),
        conversation_id="c-1",
        method="POST",
        path="/conversations/c-1/messages",
    )
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert json.loads(response.body) == {
        "error": "StoreUnavailable",
        "detail": "conversation 'c-1': not stored; retry it",
    }
    # The other RegistryUnavailable answers (starting, draining) are not a retry soon.
    draining = response_for(
        RegistryUnavailable("draining"), conversation_id=None, method="GET", path="/sessions"
    )
    assert draining.status_code == 503 and "retry-after" not in draining.headers


@pytest.mark.parametrize("path", ["/conversations/c-1/messages", "/ai-sdk/chat", "/ag-ui"])
async def test_a_message_the_store_cannot_save_is_a_503_with_retry_after(path: str) -> None:
    store = FlakyStore(MemoryStore())
    bodies = {
        "/conversations/c-1/messages": b'{"content": "hi"}',
        "/ai-sdk/chat": ai_sdk_body("c-1", b'"hi"'),
        "/ag-ui": ag_ui_body("c-1", b'"hi"'),
    }
    async with open_app(store=store) as env:
        store.fail_saves = True
        response = await env.client.post(path, content=bodies[path], headers=JSON)
        body = assert_error(response, 503, "StoreUnavailable")
        assert "c-1" in body["detail"]
        assert int(response.headers["retry-after"]) >= 1
        store.heal()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/conversations/c-1/messages", b'{"content": "hi", "request_opts": {"x": %s}}'),
        ("/ai-sdk/chat", b'{"id": "c-1", "request_opts": {"x": %s}, "messages": '
         b'[{"id": "m", "role": "user", "parts": [{"type": "text", "text": "hi"}]}]}'),
        ("/ag-ui", b'{"threadId": "c-1", "runId": "r", "forwardedProps": {"request_opts": '
         b'{"x": %s}}, "messages": [{"id": "u", "role": "user", "content": "hi"}]}'),
        ("/conversations/c-1/dismiss", b'{"request_opts": {"x": %s}}'),
    ],
    ids=["messages", "ai-sdk", "ag-ui", "dismiss"],
)  # fmt: skip
async def test_request_opts_over_64_kib_are_a_413(path: str, body: bytes) -> None:
    from sessionvisor.http._bodies import MAX_REQUEST_OPTS_BYTES

    # Valid JSON that the runtime would deep-copy and walk on the event loop.
    ints = b"[" + b",".join([b"1"] * (MAX_REQUEST_OPTS_BYTES // 2)) + b"]"
    async with open_app() as env:
        response = await env.client.post(path, content=body % ints, headers=JSON)
        detail = assert_error(response, 413, "PayloadTooLarge")["detail"]
        assert "request_opts" in detail and str(MAX_REQUEST_OPTS_BYTES) in detail
        assert await env.sup.store.load("c-1") is None
        small = b"[" + b",".join([b"1"] * 1000) + b"]"
        if path != "/conversations/c-1/dismiss":
            accepted = await env.client.post(path, content=body % small, headers=JSON)
            assert accepted.status_code in (200, 202), accepted.text
