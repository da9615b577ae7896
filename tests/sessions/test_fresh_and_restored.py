"""Fresh vs restored state, corrupt snapshots, and sticky routing wired into start."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing

from sessionvisor import (
    CorruptStateError,
    KeyedRouter,
    Message,
    RouteChangedError,
    SQLiteStore,
    Status,
)
from sessionvisor.testing import wait_until_settled

from ._support import (
    Backend,
    CueAgent,
    stored_state,
    supervisor,
    texts,
)

SEED = {
    "messages": [Message(role="system", content="You are a pirate.")],
    "metadata": {"persona": "pirate"},
}


def _row(path: Path, cid: str) -> tuple[Any, ...] | None:
    conn = sqlite3.connect(path)
    try:
        row: tuple[Any, ...] | None = conn.execute(
            "SELECT * FROM conversations WHERE id = ?", (cid,)
        ).fetchone()
        return row
    finally:
        conn.close()


def _corrupt(path: Path, cid: str, garbage: str = '{"messages": [tru') -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("UPDATE conversations SET state = ? WHERE id = ?", (garbage, cid))
        conn.commit()
    finally:
        conn.close()


async def _make_conversation(path: Path, cid: str = "c-1", **kwargs: Any) -> None:
    async with SQLiteStore(path) as store, supervisor(Backend(), store=store) as sup:
        await sup.send(cid, "hello", **kwargs)
        await wait_until_settled(sup, cid, scope=kwargs.get("scope"))


# -- fresh vs restored -------------------------------------------------------------


@pytest.mark.anyio
async def test_fresh_state_attrs_seed_a_new_conversation(anyio_backend: str) -> None:
    backend = Backend(fresh_state_attrs=SEED)
    async with supervisor(backend) as sup:
        info = await sup.start("c-1")
        state = info.handle.snapshot()
        assert state.metadata == {"persona": "pirate"}
        assert [(m.role, m.content) for m in state.messages] == [("system", "You are a pirate.")]

        await sup.send("c-1", "hello")
        await wait_until_settled(sup, "c-1")
        stored = await stored_state(sup.store, "c-1")
        assert texts(stored) == ["You are a pirate.", "hello", "re: hello"]
        assert stored.metadata == {"persona": "pirate"}


@pytest.mark.anyio
async def test_fresh_state_attrs_are_ignored_once_the_store_has_the_conversation(
    anyio_backend: str,
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.send("c-1", "hello")
        await wait_until_settled(sup, "c-1")
        await sup.stop("c-1")

        backend.fresh_state_attrs = SEED
        info = await sup.start("c-1")

        assert info.started is True
        state = info.handle.snapshot()
        assert texts(state) == ["hello", "re: hello"]
        assert state.metadata == {}


@pytest.mark.anyio
async def test_restored_state_wins_over_fresh_state_attrs_in_a_new_process(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = tmp_path / "chat.db"
    first = Backend(fresh_state_attrs={"metadata": {"generation": 1}})
    async with SQLiteStore(path) as store, supervisor(first, store=store) as sup:
        await sup.send("c-1", "hello")
        await wait_until_settled(sup, "c-1")

    second = Backend(fresh_state_attrs={"metadata": {"generation": 2}, **_no_messages()})
    async with SQLiteStore(path) as store, supervisor(second, store=store) as sup:
        info = await sup.start("c-1")
        state = info.handle.snapshot()
        assert state.metadata == {"generation": 1}
        assert texts(state) == ["hello", "re: hello"]

        await sup.send("c-2", "hi")
        await wait_until_settled(sup, "c-2")
        assert (await stored_state(sup.store, "c-2")).metadata == {"generation": 2}


def _no_messages() -> dict[str, Any]:
    return {"messages": []}


# -- corrupt snapshots -------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "garbage",
    ['{"messages": [tru', "[]", '{"messages": [{"role": "robot", "content": 1}]}'],
    ids=["truncated-json", "not-an-object", "invalid-state"],
)
async def test_corrupt_snapshot_fails_the_start_and_leaves_the_row_untouched(
    anyio_backend: str, tmp_path: Path, garbage: str
) -> None:
    path = tmp_path / "chat.db"
    await _make_conversation(path)
    _corrupt(path, "c-1", garbage)
    before = _row(path, "c-1")

    backend = Backend(fresh_state_attrs=SEED)
    async with SQLiteStore(path) as store, supervisor(backend, store=store) as sup:
        with pytest.raises(CorruptStateError) as caught:
            await sup.start("c-1")
        assert "c-1" in str(caught.value)
        assert isinstance(caught.value, ValueError)

        with pytest.raises(CorruptStateError, match="c-1"):
            await sup.send("c-1", "are you there?")

        assert await sup.running("c-1") is False
        assert await sup.list_running() == []
        assert backend.factory_calls == []
        assert backend.agent.turns == []

    assert _row(path, "c-1") == before


@pytest.mark.anyio
async def test_corrupt_snapshot_is_quarantined_and_started_fresh_when_asked(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = tmp_path / "chat.db"
    await _make_conversation(path)
    garbage = '{"messages": [tru'
    _corrupt(path, "c-1", garbage)

    backend = Backend(fresh_state_attrs=SEED)
    async with (
        SQLiteStore(path) as store,
        supervisor(backend, store=store, on_corrupt="quarantine") as sup,
    ):
        with structlog.testing.capture_logs() as logs:
            info = await sup.start("c-1")
        quarantined = [e for e in logs if e["event"] == "corrupt_state_quarantined"]
        assert len(quarantined) == 1
        assert quarantined[0]["conversation_id"] == "c-1"
        assert quarantined[0]["log_level"] == "warning"

        assert info.started is True
        assert texts(info.handle.snapshot()) == ["You are a pirate."]
        await sup.send("c-1", "hello again")
        await wait_until_settled(sup, "c-1")
        assert texts(await stored_state(sup.store, "c-1")) == [
            "You are a pirate.",
            "hello again",
            "re: hello again",
        ]

    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT key, conversation_id, state FROM quarantined_conversations"
        ).fetchall()
    finally:
        conn.close()
    assert len(rows) == 1
    key, cid, state = rows[0]
    assert cid == "c-1" and "c-1" in key and key != "c-1"
    assert state == garbage


# -- sticky routing ------------------------------------------------------------------


class NamedFactory:
    def __init__(self, name: str) -> None:
        self.name = name
        self.configs: list[Any] = []

    def create_agent(self, agent_id: str, config: Any) -> Any:
        self.configs.append(config)
        return CueAgent()


class Personas:
    """A ``KeyedRouter`` choosing by ``request_opts["persona"]`` (or a fixed key)."""

    def __init__(self, fixed: str | None = None) -> None:
        self.fixed = fixed
        self.seen: list[dict[str, Any]] = []
        self.analyst = NamedFactory("analyst")
        self.writer = NamedFactory("writer")
        self.router = KeyedRouter(
            self.select, {"analyst": self.analyst, "writer": self.writer}, default="analyst"
        )

    def select(self, scope: Any, cid: str, request_opts: Mapping[str, Any]) -> Any:
        self.seen.append(dict(request_opts))
        return self.fixed or request_opts.get("persona")


@pytest.mark.anyio
async def test_new_process_brings_a_conversation_back_on_its_recorded_route(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = tmp_path / "chat.db"
    first = Personas()
    async with SQLiteStore(path) as store, supervisor(first.router, store=store) as sup:
        await sup.send("c-1", "hello", request_opts={"persona": "writer", "lang": "fr"})
        await wait_until_settled(sup, "c-1")
    assert len(first.writer.configs) == 1

    second = Personas()
    async with SQLiteStore(path) as store, supervisor(second.router, store=store) as sup:
        await sup.send("c-1", "again")  # the request names no persona this time
        await wait_until_settled(sup, "c-1")

        assert second.seen == [{"persona": "writer", "lang": "fr"}]
        assert len(second.writer.configs) == 1
        assert second.analyst.configs == []
        assert second.writer.configs[0]["lang"] == "fr"
        record = await store.load("c-1")
        assert record is not None
        assert record.route_key == "writer"
        assert record.request_opts == {"persona": "writer", "lang": "fr"}


@pytest.mark.anyio
async def test_router_that_now_picks_another_route_fails_the_start(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = tmp_path / "chat.db"
    first = Personas()
    async with SQLiteStore(path) as store, supervisor(first.router, store=store) as sup:
        await sup.send("c-1", "hello", request_opts={"persona": "writer"})
        await wait_until_settled(sup, "c-1")
    before = _row(path, "c-1")

    changed = Personas(fixed="analyst")
    async with SQLiteStore(path) as store, supervisor(changed.router, store=store) as sup:
        with pytest.raises(RouteChangedError) as caught:
            await sup.start("c-1")
        assert "c-1" in str(caught.value)
        with pytest.raises(RouteChangedError, match="c-1"):
            await sup.send("c-1", "again")

        assert await sup.running("c-1") is False
        assert changed.analyst.configs == [] and changed.writer.configs == []
        assert _row(path, "c-1") == before

        info = await sup.start("c-1", request_opts={"mood": "calm"}, reroute=True)

        assert info.started is True
        assert len(changed.analyst.configs) == 1
        assert texts(info.handle.snapshot()) == ["hello", "re: hello"]
        assert await sup.stop("c-1") == "stopped"
        record = await store.load("c-1")
        assert record is not None
        assert record.route_key == "analyst"
        assert record.request_opts == {"mood": "calm"}

        # The new route sticks: a later start needs no reroute.
        assert (await sup.start("c-1")).started is True


@pytest.mark.anyio
async def test_request_for_another_persona_after_a_wake_is_a_route_change(
    anyio_backend: str,
) -> None:
    personas = Personas()
    async with supervisor(personas.router) as sup:
        await sup.send("c-1", "hello", request_opts={"persona": "writer"})
        await wait_until_settled(sup, "c-1")
        await sup.stop("c-1")

        with pytest.raises(RouteChangedError, match="c-1"):
            await sup.send("c-1", "now analyse", request_opts={"persona": "analyst"})
        assert await sup.running("c-1") is False
        assert texts(await stored_state(sup.store, "c-1")) == ["hello", "re: hello"]

        delivery = await sup.send(
            "c-1", "now analyse", request_opts={"persona": "analyst"}, reroute=True
        )
        assert delivery.started is True
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert len(personas.analyst.configs) == 1


@pytest.mark.anyio
async def test_fresh_state_attrs_naming_no_state_field_fail_the_start_cleanly(
    anyio_backend: str,
) -> None:
    from sessionvisor import FactoryContractError

    backend = Backend(fresh_state_attrs={"mesages": []})
    async with supervisor(backend) as sup:
        with pytest.raises(FactoryContractError, match="mesages"):
            await sup.send("c-1", "hello")
        assert await sup.running("c-1") is False
        assert await sup.store.load("c-1") is None

        backend.fresh_state_attrs = {}
        assert (await sup.send("c-1", "hello")).started is True


@pytest.mark.anyio
@pytest.mark.parametrize("call", ["resume", "dismiss", "subscribe"])
async def test_corrupt_snapshot_fails_the_other_waking_calls_too(
    anyio_backend: str, tmp_path: Path, call: str
) -> None:
    path = tmp_path / "chat.db"
    await _make_conversation(path)
    _corrupt(path, "c-1")
    before = _row(path, "c-1")

    backend = Backend()
    async with SQLiteStore(path) as store, supervisor(backend, store=store) as sup:
        with pytest.raises(CorruptStateError, match="c-1"):
            if call == "resume":
                await sup.resume("c-1", "yes")
            elif call == "dismiss":
                await sup.dismiss("c-1")
            else:
                async with sup.subscribe("c-1"):
                    pass
        assert await sup.running("c-1") is False
        assert backend.router_calls == []

    assert _row(path, "c-1") == before


@pytest.mark.anyio
async def test_selector_naming_no_route_fails_the_start_and_leaves_nothing(
    anyio_backend: str,
) -> None:
    from sessionvisor import NoRouteError

    personas = Personas()
    strict = KeyedRouter(personas.select, {"analyst": personas.analyst})
    async with supervisor(strict) as sup:
        with pytest.raises(NoRouteError, match="c-1"):
            await sup.send("c-1", "hello", request_opts={"persona": "poet"})
        assert await sup.running("c-1") is False
        assert await sup.store.load("c-1") is None
        assert personas.analyst.configs == []

        await sup.send("c-1", "hello", request_opts={"persona": "analyst"})
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        record = await sup.store.load("c-1")
        assert record is not None and record.route_key == "analyst"
