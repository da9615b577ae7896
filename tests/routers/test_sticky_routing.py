"""Sticky routing: a conversation keeps the route and the request options it was made with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import structlog

from sessionvisor.routers import (
    KeyedRouter,
    Route,
    RouteChangedError,
    resolve_sticky,
)
from sessionvisor.state._store import StoredConversation

from ._fixtures import analyst_factory, writer_factory


class RecordingSelector:
    """Selects by ``persona`` and remembers what it was asked."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, scope: Any, conversation_id: str, request_opts: Mapping[str, Any]) -> Any:
        self.seen.append(dict(request_opts))
        return request_opts.get("persona")


def _router(select: RecordingSelector) -> KeyedRouter:
    return KeyedRouter(select, {"analyst": analyst_factory, "writer": writer_factory})


def _recorded(route_key: str | None, request_opts: dict[str, Any]) -> StoredConversation:
    return StoredConversation(state={}, route_key=route_key, request_opts=request_opts)


@pytest.mark.anyio
async def test_first_start_records_the_request_opts(anyio_backend: str) -> None:
    select = RecordingSelector()

    route, to_record = await resolve_sticky(
        _router(select), None, "c-1", {"persona": "analyst", "lang": "fr"}, recorded=None
    )

    assert route.key == "analyst"
    assert to_record == {"persona": "analyst", "lang": "fr"}
    assert select.seen == [{"persona": "analyst", "lang": "fr"}]


@pytest.mark.anyio
async def test_later_start_sees_merged_opts_but_keeps_the_record(anyio_backend: str) -> None:
    select = RecordingSelector()
    recorded = _recorded("analyst", {"persona": "analyst", "lang": "fr"})

    route, to_record = await resolve_sticky(
        _router(select), None, "c-1", {"lang": "de", "mood": "calm"}, recorded=recorded
    )

    assert route.key == "analyst"
    assert select.seen == [{"persona": "analyst", "lang": "de", "mood": "calm"}]
    assert to_record == {"persona": "analyst", "lang": "fr"}
    assert route.config["lang"] == "de"


@pytest.mark.anyio
async def test_wake_without_opts_gets_the_same_route_and_inputs(anyio_backend: str) -> None:
    select = RecordingSelector()
    router = _router(select)

    first, recorded_opts = await resolve_sticky(
        router, None, "c-1", {"persona": "writer"}, recorded=None
    )
    again, _ = await resolve_sticky(
        router, None, "c-1", None, recorded=_recorded(first.key, recorded_opts)
    )

    assert again.key == first.key == "writer"
    assert select.seen == [{"persona": "writer"}, {"persona": "writer"}]


@pytest.mark.anyio
async def test_route_change_without_reroute_is_refused(anyio_backend: str) -> None:
    recorded = _recorded("analyst", {"persona": "analyst"})

    with pytest.raises(RouteChangedError) as info:
        await resolve_sticky(
            _router(RecordingSelector()), None, "c-42", {"persona": "writer"}, recorded=recorded
        )

    message = str(info.value)
    assert "'c-42'" in message
    assert "'analyst'" in message
    assert "'writer'" in message
    assert "reroute=True" in message
    assert isinstance(info.value, RuntimeError)


@pytest.mark.anyio
async def test_reroute_takes_the_new_route_and_replaces_the_recorded_opts(
    anyio_backend: str,
) -> None:
    recorded = _recorded("analyst", {"persona": "analyst", "lang": "fr"})

    with structlog.testing.capture_logs() as logs:
        route, to_record = await resolve_sticky(
            _router(RecordingSelector()),
            None,
            "c-42",
            {"persona": "writer"},
            recorded=recorded,
            reroute=True,
        )

    assert route.key == "writer"
    assert route.factory is writer_factory
    assert to_record == {"persona": "writer"}
    assert {
        "event": "conversation_rerouted",
        "conversation_id": "c-42",
        "old_route_key": "analyst",
        "route_key": "writer",
        "log_level": "info",
    } in logs


@pytest.mark.anyio
async def test_reroute_without_a_change_keeps_the_merged_opts(anyio_backend: str) -> None:
    recorded = _recorded("analyst", {"persona": "analyst", "lang": "fr"})

    route, to_record = await resolve_sticky(
        _router(RecordingSelector()), None, "c-1", {"mood": "calm"}, recorded=recorded, reroute=True
    )

    assert route.key == "analyst"
    assert to_record == {"persona": "analyst", "lang": "fr", "mood": "calm"}


@pytest.mark.anyio
async def test_recorded_conversation_without_key_is_not_checked(anyio_backend: str) -> None:
    recorded = _recorded(None, {"persona": "analyst"})

    route, to_record = await resolve_sticky(
        _router(RecordingSelector()), None, "c-1", {"persona": "writer"}, recorded=recorded
    )

    assert route.key == "writer"
    assert to_record == {"persona": "analyst"}  # the record stays; the call saw its own


@pytest.mark.anyio
@pytest.mark.parametrize("recorded", [None, _recorded("analyst", {"persona": "analyst"})])
async def test_non_json_request_opts_fail_before_the_router_runs(
    anyio_backend: str, recorded: StoredConversation | None
) -> None:
    select = RecordingSelector()

    with pytest.raises(TypeError, match=r"request_opts\['at'\] of conversation 'c-1' is of type"):
        await resolve_sticky(
            _router(select), None, "c-1", {"persona": "analyst", "at": object()}, recorded=recorded
        )

    assert select.seen == []


@pytest.mark.anyio
async def test_recorded_opts_are_not_changed_by_the_router(anyio_backend: str) -> None:
    def meddling(scope: Any, conversation_id: str, request_opts: Any) -> Route:
        request_opts["nested"]["x"] = "changed"
        return Route(analyst_factory, None, "analyst")

    recorded = _recorded("analyst", {"nested": {"x": "kept"}})

    _, to_record = await resolve_sticky(meddling, None, "c-1", {}, recorded=recorded)

    assert to_record == {"nested": {"x": "kept"}}
    assert recorded.request_opts == {"nested": {"x": "kept"}}
