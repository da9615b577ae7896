"""``KeyedRouter`` lets a selector pick one of several routes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import structlog

from sessionvisor.routers import KeyedRouter, NoRouteError, Route, RouteValidationError

from ._fixtures import PersonaConfig, User, analyst_factory, writer_factory


def by_persona(scope: Any, conversation_id: str, request_opts: Mapping[str, Any]) -> Any:
    return request_opts.get("persona")


async def by_persona_async(
    scope: Any, conversation_id: str, request_opts: Mapping[str, Any]
) -> Any:
    return request_opts.get("persona")


ROUTES: dict[str, Any] = {
    "analyst": (analyst_factory, PersonaConfig),
    "writer": writer_factory,
}


@pytest.mark.anyio
@pytest.mark.parametrize("select", [by_persona, by_persona_async], ids=["sync", "async"])
async def test_selector_picks_the_route_and_its_model_builds_the_config(
    anyio_backend: str, select: Any
) -> None:
    user = User("u-1")
    router = KeyedRouter(select, ROUTES)

    analyst = await router.resolve(user, "c-1", {"persona": "analyst"})
    writer = await router.resolve(user, "c-2", {"persona": "writer", "tone": "dry"})

    assert analyst == Route(
        analyst_factory,
        PersonaConfig(persona="analyst", conversation_id="c-1", scope=user),
        "analyst",
    )
    assert writer == Route(
        writer_factory,
        {"persona": "writer", "tone": "dry", "scope": user, "conversation_id": "c-2"},
        "writer",
    )


@pytest.mark.anyio
async def test_selector_gets_scope_conversation_and_request_opts(anyio_backend: str) -> None:
    calls: list[tuple[Any, ...]] = []

    def select(scope: Any, conversation_id: str, request_opts: Mapping[str, Any]) -> str:
        calls.append((scope, conversation_id, dict(request_opts)))
        return "writer"

    user = User("u-1")
    await KeyedRouter(select, ROUTES).resolve(user, "c-7", {"persona": "x"})

    assert calls == [(user, "c-7", {"persona": "x"})]


@pytest.mark.anyio
async def test_unknown_key_without_default_is_no_route_error(anyio_backend: str) -> None:
    router = KeyedRouter(by_persona, ROUTES)

    with pytest.raises(NoRouteError) as info:
        await router.resolve(None, "c-42", {"persona": "pirate"})

    message = str(info.value)
    assert "'pirate'" in message
    assert "'c-42'" in message
    assert "known routes: analyst, writer" in message
    assert isinstance(info.value, LookupError)


@pytest.mark.anyio
@pytest.mark.parametrize("selected", ["pirate", None])
async def test_unknown_key_with_default_takes_the_default_route(
    anyio_backend: str, selected: Any
) -> None:
    router = KeyedRouter(lambda scope, cid, opts: selected, ROUTES, default="writer")

    with structlog.testing.capture_logs() as logs:
        route = await router.resolve(None, "c-3", {})

    assert route.key == "writer"
    assert route.factory is writer_factory
    assert {
        "event": "route_default_used",
        "conversation_id": "c-3",
        "selected": repr(selected),
        "route_key": "writer",
        "log_level": "debug",
    } in logs


@pytest.mark.anyio
async def test_known_key_is_taken_even_when_a_default_exists(anyio_backend: str) -> None:
    router = KeyedRouter(by_persona, ROUTES, default="writer")

    route = await router.resolve(None, "c-4", {"persona": "analyst"})

    assert route.key == "analyst"


@pytest.mark.anyio
async def test_chosen_routes_model_validates_the_config(anyio_backend: str) -> None:
    router = KeyedRouter(lambda scope, cid, opts: "analyst", ROUTES)

    with pytest.raises(RouteValidationError) as info:
        await router.resolve(None, "c-5", {"persona": "analyst", "temperature": "hot"})

    assert "'c-5'" in str(info.value)
    assert [error["loc"] for error in info.value.errors] == [["temperature"]]


@pytest.mark.anyio
async def test_selector_exception_propagates_unchanged(anyio_backend: str) -> None:
    boom = RuntimeError("directory down")

    def select(scope: Any, cid: str, opts: Mapping[str, Any]) -> str:
        raise boom

    with pytest.raises(RuntimeError) as info:
        await KeyedRouter(select, ROUTES).resolve(None, "c-6", {})

    assert info.value is boom


def test_default_must_be_a_route() -> None:
    with pytest.raises(ValueError, match=r"default 'pirate' is not a route; known routes: analyst"):
        KeyedRouter(by_persona, ROUTES, default="pirate")


def test_routes_are_copied_at_construction() -> None:
    routes = dict(ROUTES)
    router = KeyedRouter(by_persona, routes)
    routes["pirate"] = writer_factory

    assert router.keys == ("analyst", "writer")


@pytest.mark.parametrize(
    ("routes", "error", "match"),
    [
        ({}, ValueError, "at least one route"),
        ({"a": 42}, TypeError, "route 'a' must be a factory"),
        ({"a": (analyst_factory, dict)}, TypeError, "route 'a' model must be a pydantic"),
        ({"a": (analyst_factory, PersonaConfig, 1)}, TypeError, "tuple of 3 items"),
        ({1: analyst_factory}, TypeError, "keys must be str"),
    ],
)
def test_malformed_routes_fail_at_construction(
    routes: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        KeyedRouter(by_persona, routes)


def test_selector_must_be_callable() -> None:
    with pytest.raises(TypeError, match="select must be callable"):
        KeyedRouter("persona", ROUTES)  # type: ignore[arg-type]
