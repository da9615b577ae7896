"""``resolve_route`` consults any router shape and checks its answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from sessionvisor.routers import FactoryRouter, Route, SingleRouter, resolve_route

from ._fixtures import analyst_factory

ROUTE = Route(analyst_factory, {"model": "small"}, "small")


class SyncRouter:
    def resolve(self, scope: Any, conversation_id: str, request_opts: Mapping[str, Any]) -> Route:
        return ROUTE


class AsyncRouter:
    async def resolve(
        self, scope: Any, conversation_id: str, request_opts: Mapping[str, Any]
    ) -> Route:
        return ROUTE


def plain_router(scope: Any, conversation_id: str, request_opts: Mapping[str, Any]) -> Route:
    return ROUTE


async def plain_async_router(
    scope: Any, conversation_id: str, request_opts: Mapping[str, Any]
) -> Route:
    return ROUTE


@pytest.mark.anyio
@pytest.mark.parametrize(
    "router",
    [SyncRouter(), AsyncRouter(), plain_router, plain_async_router],
    ids=["sync-resolve", "async-resolve", "callable", "async-callable"],
)
async def test_every_router_shape_is_consulted(anyio_backend: str, router: Any) -> None:
    assert await resolve_route(router, None, "c-1", {}) is ROUTE


def test_router_classes_satisfy_the_protocol() -> None:
    assert isinstance(SyncRouter(), FactoryRouter)
    assert isinstance(AsyncRouter(), FactoryRouter)
    assert isinstance(SingleRouter(analyst_factory), FactoryRouter)


@pytest.mark.anyio
async def test_router_gets_its_inputs(anyio_backend: str) -> None:
    seen: list[tuple[Any, ...]] = []

    def router(scope: Any, conversation_id: str, request_opts: Mapping[str, Any]) -> Route:
        seen.append((scope, conversation_id, request_opts))
        return ROUTE

    await resolve_route(router, "scope", "c-2", {"persona": "analyst"})
    await resolve_route(router, "scope", "c-3", None)

    assert seen == [("scope", "c-2", {"persona": "analyst"}), ("scope", "c-3", {})]


@pytest.mark.anyio
async def test_result_that_is_not_a_route_is_a_type_error_naming_the_router(
    anyio_backend: str,
) -> None:
    def returns_a_tuple(scope: Any, conversation_id: str, request_opts: Mapping[str, Any]) -> Any:
        return (analyst_factory, {})

    with pytest.raises(TypeError, match=r"router .*returns_a_tuple returned \(<function"):
        await resolve_route(returns_a_tuple, None, "c-4", {})


@pytest.mark.anyio
async def test_non_router_is_a_type_error(anyio_backend: str) -> None:
    with pytest.raises(TypeError, match="42 is not a router"):
        await resolve_route(42, None, "c-5", {})  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_router_editing_its_input_does_not_change_the_callers_opts(
    anyio_backend: str,
) -> None:
    def meddling(scope: Any, conversation_id: str, request_opts: Any) -> Route:
        request_opts["nested"]["x"] = 2
        request_opts["added"] = True
        return ROUTE

    opts = {"nested": {"x": 1}}
    await resolve_route(meddling, None, "c-6", opts)

    assert opts == {"nested": {"x": 1}}


def test_route_checks_its_fields() -> None:
    with pytest.raises(TypeError, match="factory must be"):
        Route("not a factory")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be a str or None"):
        Route(analyst_factory, None, 3)  # type: ignore[arg-type]
