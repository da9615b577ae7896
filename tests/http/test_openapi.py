"""``GET /openapi.json``: a valid OpenAPI 3.1 document describing every route of the app."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from sessionvisor import Status
from sessionvisor.http import create_app
from sessionvisor.http._openapi import openapi_document, route_operations, undocumented_routes
from sessionvisor.testing import wait_for_status

from ._support import ALICE, open_app

pytestmark = pytest.mark.anyio


async def test_the_document_is_valid_openapi_and_describes_every_route_of_the_app() -> None:
    async with open_app() as env:
        answer = await env.client.get("/openapi.json")
        assert answer.status_code == 200
        document = answer.json()
        validate(document)
        assert document["openapi"].startswith("3.1")
        described = {
            (method.upper(), path)
            for path, operations in document["paths"].items()
            for method in operations
        }
        served = set(route_operations(env.app.routes))
        assert served == described
        # Every route has a real description, not the placeholder of an unknown route.
        assert undocumented_routes(env.app.routes) == []
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                assert "x-undocumented" not in operation, (method, path)


async def test_the_frontend_protocol_routes_are_described_when_the_app_serves_them() -> None:
    async with open_app() as env:
        document = (await env.client.get("/openapi.json")).json()
    served = set(route_operations(env.app.routes))
    for method, path in served:
        assert path in document["paths"] and method.lower() in document["paths"][path]


async def test_errors_are_the_json_error_body_with_the_codes_the_app_answers() -> None:
    async with open_app() as env:
        document = (await env.client.get("/openapi.json")).json()
        send = document["paths"]["/conversations/{cid}/messages"]["post"]
        assert set(send["responses"]) >= {"202", "400", "403", "404", "413", "415", "429", "503"}
        error = {"$ref": "#/components/schemas/Error"}
        for status, answer in send["responses"].items():
            if status.startswith(("4", "5")):
                assert answer["content"]["application/json"]["schema"] == error
        assert "500" not in {
            s for ops in document["paths"].values() for o in ops.values() for s in o["responses"]
        }
        assert document["components"]["schemas"]["Error"]["required"] == ["error", "detail"]
        # The app's own error answers fit the documented body.
        bad = await env.client.post(
            "/conversations/c1/messages",
            content=b"{",
            headers={**ALICE, "content-type": "application/json"},
        )
        assert bad.status_code == 400 and set(bad.json()) >= {"error", "detail"}


async def test_request_bodies_come_from_the_models_that_validate_them() -> None:
    async with open_app() as env:
        document = (await env.client.get("/openapi.json")).json()
    body = document["paths"]["/conversations/{cid}/messages"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert body["required"] is True
    assert schema["required"] == ["content"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) >= {"content", "request_opts"}
    dismiss = document["paths"]["/conversations/{cid}/dismiss"]["post"]["requestBody"]
    assert dismiss["required"] is False
    events = document["paths"]["/conversations/{cid}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert {p["name"] for p in events["parameters"]} == {"cid", "after", "Last-Event-ID"}


def test_a_route_without_a_description_is_named_and_marked() -> None:
    async def endpoint(request: Any) -> Any:
        raise AssertionError("never called")

    routes = [
        Route("/healthz", endpoint, methods=["GET"]),
        Route("/brand-new/{thing}", endpoint, methods=["PUT"]),
        Mount("/sub", routes=[Route("/other", endpoint, methods=["GET"])]),
    ]
    assert undocumented_routes(routes) == [("PUT", "/brand-new/{thing}"), ("GET", "/sub/other")]
    document = openapi_document(routes)
    validate(document)
    assert document["paths"]["/brand-new/{thing}"]["put"]["x-undocumented"] is True
    assert document["paths"]["/brand-new/{thing}"]["put"]["parameters"][0]["name"] == "thing"


async def test_mounted_under_a_prefix_the_document_names_it_as_its_server() -> None:
    import httpx

    async with open_app() as env:
        parent = Starlette(routes=[Mount("/chat", app=env.app)])
        transport = httpx.ASGITransport(app=parent)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            document = (await client.get("/chat/openapi.json")).json()
    assert document["servers"] == [{"url": "/chat"}]
    assert "/conversations/{cid}/messages" in document["paths"]


def test_the_admin_and_page_routes_follow_their_flags() -> None:
    from sessionvisor import SessionSupervisor
    from sessionvisor.testing import ScriptedAgent

    sup = SessionSupervisor(lambda scope, cid, opts: ScriptedAgent())
    bare = create_app(sup, page=False, admin=False)
    paths = {path for _, path in route_operations(bare.routes)}
    assert "/" not in paths and "/admin" not in paths and "/openapi.json" in paths
    assert undocumented_routes(bare.routes) == []


# -- the document says exactly what the server accepts and answers ------------------


def body_validator(document: dict[str, Any], method: str, path: str) -> Any:
    """A JSON Schema validator for the operation's request body, its $refs resolved."""
    from jsonschema import Draft202012Validator

    operation = document["paths"][path][method]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": document["components"]})


def event_validator(document: dict[str, Any], path: str, method: str = "get") -> Any:
    """A validator for one event of the operation's event stream, as SSE clients read it."""
    from jsonschema import Draft202012Validator

    answer = document["paths"][path][method]["responses"]["200"]
    return Draft202012Validator(answer["content"]["text/event-stream"]["schema"])


async def test_event_streams_describe_each_event_not_a_plain_string() -> None:
    async with open_app() as env:
        document = (await env.client.get("/openapi.json")).json()
    native = event_validator(document, "/conversations/{cid}/events")
    snapshot = '{"type":"StatusChanged","seq":0,"agent_id":"a","conversation_id":"c"}'
    assert native.is_valid({"id": "0", "event": "StatusChanged", "data": snapshot})
    assert not native.is_valid("id: 0\nevent: StatusChanged\ndata: {}\n\n")
    assert not native.is_valid({"id": "x", "event": "StatusChanged", "data": snapshot})
    assert not native.is_valid({"id": "1", "event": "Nonsense", "data": snapshot})
    ai_sdk = event_validator(document, "/ai-sdk/chat", "post")
    assert ai_sdk.is_valid({"event": "message", "data": '{"type":"start"}'})
    assert ai_sdk.is_valid({"event": "message", "data": "[DONE]"})
    assert not ai_sdk.is_valid({"event": "message", "data": "nonsense"})
    resumed = event_validator(document, "/ai-sdk/chat/{cid}/stream")
    assert resumed.schema == ai_sdk.schema
    ag_ui = event_validator(document, "/ag-ui", "post")
    assert ag_ui.is_valid({"event": "message", "data": '{"type":"RUN_STARTED","threadId":"t"}'})
    assert not ag_ui.is_valid({"event": "StatusChanged", "data": "{}"})


async def test_bodies_the_frontend_routes_refuse_are_invalid_in_the_document() -> None:
    async with open_app() as env:
        document = (await env.client.get("/openapi.json")).json()
        ag_ui = body_validator(document, "post", "/ag-ui")
        ai_sdk = body_validator(document, "post", "/ai-sdk/chat")
        run = {"threadId": "t-1", "runId": "r-1", "messages": [], "resume": []}
        part_less = {"id": "c-1", "messages": [{"id": "m-1", "role": "user", "parts": []}]}
        refused = [
            ("/ag-ui", ag_ui, run),
            ("/ag-ui", ag_ui, {**run, "messages": [{"id": "u", "role": "user", "content": ""}]}),
            ("/ag-ui", ag_ui, {**run, "messages": [{"id": "u", "content": "no role"}]}),
            ("/ai-sdk/chat", ai_sdk, part_less),
            ("/ai-sdk/chat", ai_sdk, {**part_less, "trigger": "regenerate-message"}),
        ]
        for path, validator, body in refused:
            assert not validator.is_valid(body), body
            answer = await env.client.post(path, json=body, headers=ALICE)
            assert answer.status_code == 400, (body, answer.text)
        # What the schema accepts, the server takes.
        accepted = [
            ("/ag-ui", ag_ui, {**run, "messages": [{"id": "u", "role": "user", "content": "hi"}]}),
            (
                "/ai-sdk/chat",
                ai_sdk,
                {
                    "id": "c-1",
                    "messages": [
                        {"id": "m", "role": "user", "parts": [{"type": "file", "url": "u"}]}
                    ],
                },
            ),
        ]
        for path, validator, body in accepted:
            assert validator.is_valid(body), body
            answer = await env.client.post(path, json=body, headers=ALICE)
            assert answer.status_code == 200, (body, answer.text)


async def test_an_answer_when_nothing_is_pending_is_a_409_as_the_document_says() -> None:
    async with open_app() as env:
        await env.send("c-1", "hello")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        document = (await env.client.get("/openapi.json")).json()
        approval = {
            "type": "tool-delete",
            "toolCallId": "call-9",
            "state": "approval-responded",
            "approval": {"approved": True},
        }
        assistant = {"id": "m-2", "role": "assistant", "parts": [approval]}
        bodies = [
            ("/ai-sdk/chat", {"id": "c-1", "messages": [assistant]}),
            (
                "/ag-ui",
                {
                    "threadId": "c-1",
                    "runId": "r-1",
                    "messages": [],
                    "resume": [{"interruptId": "call-9", "status": "resolved"}],
                },
            ),
        ]
        for path, body in bodies:
            assert body_validator(document, "post", path).is_valid(body)
            answer = await env.client.post(path, json=body, headers=ALICE)
            assert (answer.status_code, answer.json()["error"]) == (409, "InvalidStatus")


async def test_the_bearer_scheme_is_declared_exactly_when_the_app_checks_tokens() -> None:
    from sessionvisor.http import jwt_scope

    async with open_app() as env:
        plain = (await env.client.get("/openapi.json")).json()
    assert "securitySchemes" not in plain["components"]
    assert all("security" not in op for ops in plain["paths"].values() for op in ops.values())

    async with open_app(scope_from_request=jwt_scope(secret="s" * 48)) as env:
        document = (await env.client.get("/openapi.json")).json()
        validate(document)
        schemes = document["components"]["securitySchemes"]
        assert schemes["bearerAuth"]["type"] == "http"
        assert schemes["bearerAuth"]["scheme"] == "bearer"
        assert schemes["accessTokenQuery"] == {**schemes["accessTokenQuery"], "in": "query"}
        paths = document["paths"]
        bearer = [{"bearerAuth": []}]
        assert paths["/conversations/{cid}/messages"]["post"]["security"] == bearer
        assert paths["/sessions"]["get"]["security"] == bearer
        # The token may come in the query on the GET event streams only.
        either = [{"bearerAuth": []}, {"accessTokenQuery": []}]
        assert paths["/conversations/{cid}/events"]["get"]["security"] == either
        assert paths["/ai-sdk/chat/{cid}/stream"]["get"]["security"] == either
        for public in ("/healthz", "/readyz", "/openapi.json", "/", "/admin"):
            assert paths[public]["get"]["security"] == [], public
        # And the server does what it says: no token, a 401 with its challenge.
        refused = await env.client.get("/sessions")
        assert refused.status_code == 401 and "WWW-Authenticate" in refused.headers
        assert "401" in paths["/sessions"]["get"]["responses"]
        assert (await env.client.get("/healthz")).status_code == 200


async def test_each_route_declares_the_errors_it_can_give_and_their_headers() -> None:
    async with open_app() as env:
        document = (await env.client.get("/openapi.json")).json()
    paths = document["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            if method == "post":
                # A body that is not JSON, or too large, on every POST.
                assert {"400", "413", "415", "503"} <= statuses, (method, path)
            if "503" in statuses:
                # A store outage answers 503 with Retry-After (the command was not stored).
                retry = operation["responses"]["503"]["headers"]["Retry-After"]
                assert retry["schema"]["pattern"] == "^[0-9]+$"
    # The streams never say whether a conversation exists.
    assert "404" not in paths["/conversations/{cid}/events"]["get"]["responses"]
    assert "404" not in paths["/ai-sdk/chat/{cid}/stream"]["get"]["responses"]
    assert "404" in paths["/conversations/{cid}"]["get"]["responses"]


@pytest.mark.parametrize("value", ["TRUE", " true", "maybe"])
async def test_purge_takes_exactly_the_documented_values(value: str) -> None:
    async with open_app() as env:
        document = (await env.client.get("/openapi.json")).json()
        [purge] = [
            p
            for p in document["paths"]["/conversations/{cid}"]["delete"]["parameters"]
            if p["name"] == "purge"
        ]
        assert value not in purge["schema"]["enum"]
        await env.send("c-1", "hello")
        answer = await env.client.delete(
            "/conversations/c-1", params={"purge": value}, headers=ALICE
        )
        assert answer.status_code == 400
        twice = await env.client.delete("/conversations/c-1?purge=true&purge=no", headers=ALICE)
        assert twice.status_code == 400
        assert (await env.client.delete("/conversations/c-1?purge=true", headers=ALICE)).is_success
