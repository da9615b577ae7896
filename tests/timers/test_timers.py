"""Durable timers in one process: schedule, fire once, replace, cancel, list; the
order with messages; firing while the conversation sleeps; bad input. On the three
stores, on asyncio and trio, with a hand-driven clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from sessionvisor import (
    Done,
    InvalidStatus,
    MemoryStore,
    NothingStored,
    SessionSupervisor,
    SingleRouter,
    TimerInfo,
    Turn,
    UnknownTimer,
)
from sessionvisor.testing import ManualClock, wait_until, wait_until_settled

pytestmark = pytest.mark.anyio
CID = "c-timers"


class Reminders:
    """Answers messages; records each turn; ``on_timer`` records the payload."""

    def __init__(self) -> None:
        self.turns: list[tuple[str, Any]] = []
        self.gate: anyio.Event | None = None

    async def run(self, turn: Turn) -> Done:
        text = turn.state.messages[-1].text()
        self.turns.append(("run", text))
        if text == "block" and self.gate is not None:
            await self.gate.wait()
        if text.startswith("remind "):
            info = await turn.schedule({"say": text[7:]}, delay=30, key="from-turn")
            return Done(turn.state, reply=f"will remind at {info.due.isoformat()}")
        return Done(turn.state, reply=f"ok {text}")

    async def on_timer(self, turn: Turn, payload: Any) -> Done:
        self.turns.append(("timer", payload))
        return Done(turn.state, reply=f"timer {payload}")


class Plain:
    """An agent without ``on_timer``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def run(self, turn: Turn) -> Done:
        last = turn.state.messages[-1]
        self.seen.append((last.role, last.text()))
        return Done(turn.state, reply="plain")


@asynccontextmanager
async def supervised(
    store: Any, clock: ManualClock, agent: Any, **opts: Any
) -> AsyncIterator[SessionSupervisor]:
    router = SingleRouter(lambda agent_id, config: agent)
    options = {"inactivity_timeout": 10_000.0, **opts}
    async with SessionSupervisor(
        router, store=store, clock=clock, supervisor_opts=options
    ) as sup:
        yield sup


async def timer_turns(agent: Reminders, count: int) -> list[Any]:
    await wait_until(lambda: sum(kind == "timer" for kind, _ in agent.turns) >= count)
    return [payload for kind, payload in agent.turns if kind == "timer"]


async def test_a_timer_fires_once_at_its_due_time(store: Any) -> None:
    clock, agent = ManualClock(), Reminders()
    async with supervised(store, clock, agent) as sup:
        await sup.send(CID, "hello")
        await wait_until_settled(sup, CID)
        info = await sup.schedule(CID, {"n": 1}, delay=60)
        assert isinstance(info, TimerInfo) and info.payload == {"n": 1}
        assert info.key.startswith("t-") and info.due.tzinfo is not None
        assert await sup.timers(CID) == [info]
        clock.advance(59)
        await wait_until_settled(sup, CID)
        assert [k for k, _ in agent.turns] == ["run"]
        clock.advance(1)
        assert await timer_turns(agent, 1) == [{"n": 1}]
        await wait_until_settled(sup, CID)
        await wait_until(lambda: _no_timers(sup))
        clock.advance(3600)
        await wait_until_settled(sup, CID)
        assert [k for k, _ in agent.turns] == ["run", "timer"]
        state = await sup.load(CID)
        assert state is not None
        assert state.messages[-1].text() == "timer {'n': 1}"
        assert state.messages[-2].metadata["timer"]["key"] == info.key


async def _no_timers(sup: SessionSupervisor) -> bool:
    return await sup.timers(CID) == []


async def test_same_key_replaces_and_cancel_removes(store: Any) -> None:
    clock, agent = ManualClock(), Reminders()
    async with supervised(store, clock, agent) as sup:
        await sup.send(CID, "hello")
        first = await sup.schedule(CID, "first", delay=10, key="k")
        second = await sup.schedule(CID, "second", delay=20, key="k")
        other = await sup.schedule(CID, "other", delay=5, key="other")
        assert [t.key for t in await sup.timers(CID)] == ["other", "k"]
        assert (await sup.timers(CID))[1] == second != first
        await sup.cancel_timer(CID, "other")
        with pytest.raises(UnknownTimer) as raised:
            await sup.cancel_timer(CID, "other")
        assert isinstance(raised.value, LookupError) and raised.value.key == "other"
        assert other not in await sup.timers(CID)
        clock.advance(30)
        assert await timer_turns(agent, 1) == ["second"]
        await wait_until_settled(sup, CID)
        clock.advance(30)
        await wait_until_settled(sup, CID)
        assert [p for k, p in agent.turns if k == "timer"] == ["second"]


async def test_a_due_time_in_the_past_fires_at_once(store: Any) -> None:
    clock, agent = ManualClock(), Reminders()
    async with supervised(store, clock, agent) as sup:
        await sup.send(CID, "hello")
        await sup.schedule(CID, "late", at=clock.wall() - timedelta(hours=1))
        assert await timer_turns(agent, 1) == ["late"]


async def test_a_timer_runs_after_the_running_turn_in_order_with_messages(store: Any) -> None:
    clock, agent = ManualClock(), Reminders()
    agent.gate = anyio.Event()
    async with supervised(store, clock, agent) as sup:
        await sup.send(CID, "block")
        await wait_until(lambda: agent.turns == [("run", "block")])
        await sup.send(CID, "before")
        await sup.schedule(CID, "due", delay=0)
        await wait_until(lambda: _queued(sup) == 2)
        await sup.send(CID, "after")
        agent.gate.set()
        await wait_until(lambda: len(agent.turns) == 4)
        await wait_until_settled(sup, CID)
        assert agent.turns == [
            ("run", "block"),
            ("run", "before"),
            ("timer", "due"),
            ("run", "after"),
        ]


def _queued(sup: SessionSupervisor) -> int:
    handle = sup.get(CID)
    return 0 if handle is None else len(handle.snapshot().queued)


async def test_a_timer_wakes_a_stopped_conversation(store: Any) -> None:
    clock, agent = ManualClock(), Reminders()
    async with supervised(store, clock, agent) as sup:
        await sup.send(CID, "hello")
        await wait_until_settled(sup, CID)
        await sup.schedule(CID, "wake up", delay=100)
        assert await sup.stop(CID) == "stopped"
        assert not await sup.running(CID)
        clock.advance(100)
        assert await timer_turns(agent, 1) == ["wake up"]


async def test_a_timer_fires_in_a_process_that_never_served_the_conversation(
    backend: Any,
) -> None:
    store = await backend.open()
    clock, agent = ManualClock(), Reminders()
    async with supervised(store, clock, agent) as sup:
        await sup.send(CID, "hello")
        await wait_until_settled(sup, CID)
        await sup.schedule(CID, "later", delay=100)
    # A new supervisor (a restarted process) over the same store.
    later, agent2 = ManualClock(wall=clock.wall()), Reminders()
    async with supervised(await backend.open(), later, agent2) as sup:
        assert not await sup.running(CID)
        assert [t.payload for t in await sup.timers(CID)] == ["later"]
        later.advance(100)
        assert await timer_turns(agent2, 1) == ["later"]
        await wait_until(lambda: _no_timers(sup))
    assert agent.turns == [("run", "hello")]


async def test_an_agent_schedules_from_its_turn(store: Any) -> None:
    clock, agent = ManualClock(), Reminders()
    async with supervised(store, clock, agent) as sup:
        await sup.send(CID, "remind me")
        await wait_until_settled(sup, CID)
        (info,) = await sup.timers(CID)
        assert info.key == "from-turn" and info.payload == {"say": "me"}
        clock.advance(30)
        assert await timer_turns(agent, 1) == [{"say": "me"}]


async def test_an_agent_without_on_timer_gets_the_payload_as_a_user_message() -> None:
    clock, agent = ManualClock(), Plain()
    async with supervised(MemoryStore(), clock, agent) as sup:
        await sup.send(CID, "hello")
        await sup.schedule(CID, "check the oven", delay=1)
        await sup.schedule(CID, {"a": 1}, delay=2)
        clock.advance(5)
        await wait_until(lambda: len(agent.seen) == 3)
        assert agent.seen == [("user", "hello"), ("user", "check the oven"), ("user", '{"a": 1}')]


async def test_bad_input_is_refused_before_anything_is_stored() -> None:
    clock = ManualClock()
    async with supervised(MemoryStore(), clock, Reminders()) as sup:
        await sup.send(CID, "hello")
        naive = datetime(2030, 1, 1)
        bad: list[tuple[dict[str, Any], type[Exception]]] = [
            ({"delay": -1}, ValueError),
            ({"delay": True}, TypeError),
            ({"delay": float("nan")}, ValueError),
            ({"delay": float("inf")}, ValueError),
            ({"delay": "10"}, TypeError),
            ({"delay": 366 * 24 * 3600}, ValueError),
            ({"at": naive}, ValueError),
            ({"at": "2030-01-01T00:00:00Z"}, TypeError),
            ({"at": clock.wall() + timedelta(days=400)}, ValueError),
            ({}, TypeError),
            ({"delay": 1, "at": clock.wall()}, TypeError),
            ({"delay": 1, "payload": object()}, TypeError),
            ({"delay": 1, "payload": float("nan")}, ValueError),
            ({"delay": 1, "payload": "x" * (64 * 1024)}, ValueError),
            ({"delay": 1, "key": 7}, TypeError),
            ({"delay": 1, "key": ""}, ValueError),
            ({"delay": 1, "key": "k" * 129}, ValueError),
        ]
        for kwargs, error in bad:
            payload = kwargs.pop("payload", None)
            with pytest.raises(error):
                await sup.schedule(CID, payload, **kwargs)
        assert await sup.timers(CID) == []
        with pytest.raises(NothingStored):
            await sup.schedule("c-unknown", "x", delay=1)
        with pytest.raises(UnknownTimer):
            await sup.cancel_timer(CID, "nope")
        ok = await sup.schedule(CID, "y" * 100, at=datetime(2000, 1, 1, tzinfo=UTC))
        assert ok.due.year == 2000


async def test_another_owner_cannot_see_or_touch_the_timers() -> None:
    from sessionvisor import AccessDenied

    clock = ManualClock()
    async with supervised(MemoryStore(), clock, Reminders()) as sup:
        await sup.send(CID, "hello", scope="alice")
        await sup.schedule(CID, "x", delay=5, key="k", scope="alice")
        with pytest.raises(AccessDenied):
            await sup.schedule(CID, "x", delay=5, scope="bob")
        with pytest.raises(AccessDenied):
            await sup.timers(CID, scope="bob")
        with pytest.raises(AccessDenied):
            await sup.cancel_timer(CID, "k", scope="bob")
        assert [t.key for t in await sup.timers(CID, scope="alice")] == ["k"]


class NoTimers(MemoryStore):
    """A store of someone else's without the timer methods."""

    put_timer = None  # type: ignore[assignment]


async def test_a_store_without_timers_is_a_clear_type_error() -> None:
    async with supervised(NoTimers(), ManualClock(), Reminders()) as sup:
        await sup.send(CID, "hello")
        with pytest.raises(TypeError, match="put_timer"):
            await sup.schedule(CID, "x", delay=1)


async def test_a_fired_timer_is_not_what_a_regenerate_or_an_edit_asks_again() -> None:
    clock, agent = ManualClock(), Reminders()
    async with supervised(MemoryStore(), clock, agent) as sup:
        await sup.send(CID, "hello")
        await sup.schedule(CID, "ping", delay=1)
        clock.advance(1)
        assert await timer_turns(agent, 1) == ["ping"]
        await wait_until_settled(sup, CID)
        state = await sup.load(CID)
        assert state is not None
        fired = state.messages[-2]
        assert "timer" in fired.metadata
        with pytest.raises(InvalidStatus, match="a fired timer, not a user message"):
            await sup.edit(CID, fired.id, "changed")
        # By default a regenerate answers the last message a user wrote, again.
        await sup.regenerate(CID)
        await wait_until(lambda: [k for k, _ in agent.turns] == ["run", "timer", "run"])
        await wait_until_settled(sup, CID)
        state = await sup.load(CID)
    assert state is not None
    assert [(m.role, m.text()) for m in state.messages] == [
        ("user", "hello"),
        ("assistant", "ok hello"),
    ]
