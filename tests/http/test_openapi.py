"""``GET /openapi.json``: a valid OpenAPI 3.1 document describing every route of the app."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from sessionvisor.http import create_app
from sessionvisor.http._openapi import openapi_document, route_operations, undocumented_routes

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
