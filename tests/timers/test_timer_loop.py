"""The timer loop on its own (``TimerLoop`` over a ``MemoryStore``, a hand-driven
clock and a ``fire`` of the test's): back-off when the store fails, with no
spinning; the rows of fired timers removed together; reading on while a timer
fires. On asyncio and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import anyio
import pytest

from sessionvisor import MemoryStore
from sessionvisor.sessions._timer_loop import Fired, TimerLoop
from sessionvisor.state import StoredTimer
from sessionvisor.testing import ManualClock

pytestmark = pytest.mark.anyio

BACK_OFF = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


class FlakyStore(MemoryStore):
    """Counts the loop's reads and removals; ``failing`` makes them raise."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: set[str] = set()
        self.calls: dict[str, int] = {"due_timers": 0, "next_timer_due": 0, "drop": 0}
        self.drop_gate: anyio.Event | None = None  # holds the removals while set
        self.dropped: list[int] = []  # how many rows each removal named

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if name in self.failing:
            raise OSError(f"{name}: the database is down")

    async def due_timers(self, until: datetime, limit: int) -> list[tuple[str, StoredTimer]]:
        self._call("due_timers")
        return await super().due_timers(until, limit)

    async def next_timer_due(self) -> datetime | None:
        self._call("next_timer_due")
        return await super().next_timer_due()

    async def drop_fired_timers(self, fired: list[tuple[str, str, str]]) -> list[bool]:
        self._call("drop")
        self.dropped.append(len(fired))
        if self.drop_gate is not None:
            await self.drop_gate.wait()
        return await super().drop_fired_timers(fired)


class Firings:
    """The loop's ``fire``: records each call; ``gate`` holds the named timers."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gates: dict[str, anyio.Event] = {}

    async def __call__(self, conversation_id: str, timer: StoredTimer) -> Fired:
        self.calls.append(timer.key)
        gate = self.gates.get(timer.key)
        if gate is not None:
            await gate.wait()
        return "fired"


@asynccontextmanager
async def running(clock: ManualClock, store: Any, fire: Firings) -> AsyncIterator[TimerLoop]:
    loop = TimerLoop(clock, store)
    async with anyio.create_task_group() as tg:
        tg.start_soon(loop.run, fire)
        await anyio.wait_all_tasks_blocked()
        yield loop
        tg.cancel_scope.cancel()


def timer(clock: ManualClock, key: str, delay: float) -> StoredTimer:
    return StoredTimer(key, clock.wall() + timedelta(seconds=delay), None, f"id-{key}")


async def settled() -> None:
    """Every task of the test is blocked: what the loop does next needs time to pass."""
    await anyio.wait_all_tasks_blocked()


async def test_a_failing_store_is_read_again_after_growing_delays_never_at_once() -> None:
    clock, store, fire = ManualClock(), FlakyStore(), Firings()
    await store.put_timer("c", timer(clock, "t", 0))
    store.failing.add("due_timers")
    async with running(clock, store, fire) as loop:
        assert store.calls["due_timers"] == 1
        for reads, delay in enumerate(BACK_OFF, start=2):
            # Until the delay is over the loop sleeps: no read however long we wait.
            clock.advance(delay - 0.001)
            await settled()
            assert store.calls["due_timers"] == reads - 1 and clock.sleepers == 1
            clock.advance(0.001)
            await settled()
            assert store.calls["due_timers"] == reads and clock.sleepers == 1
        assert fire.calls == [] and store.calls["next_timer_due"] == 0
        # The store comes back: the next read fires the timer, once, and the loop
        # sleeps until poked (nothing stored).
        store.failing.clear()
        clock.advance(30)
        await settled()
        assert fire.calls == ["t"] and loop.fired == 1
        assert await store.list_timers("c") == []
        assert clock.sleepers == 0
        # A new failure starts the back-off over at one second.
        store.failing.add("due_timers")
        reads = store.calls["due_timers"]
        loop.poke(clock.wall())
        await settled()
        assert store.calls["due_timers"] == reads + 1
        clock.advance(1)
        await settled()
        assert store.calls["due_timers"] == reads + 2


async def test_a_failing_next_due_read_backs_off_too() -> None:
    clock, store, fire = ManualClock(), FlakyStore(), Firings()
    store.failing.add("next_timer_due")
    async with running(clock, store, fire):
        for reads, delay in enumerate(BACK_OFF[:4], start=2):
            clock.advance(delay - 0.001)
            await settled()
            assert store.calls["next_timer_due"] == reads - 1
            clock.advance(0.001)
            await settled()
            assert store.calls["next_timer_due"] == reads


async def test_a_failing_removal_is_retried_after_a_delay_and_the_timer_stays() -> None:
    clock, store, fire = ManualClock(), FlakyStore(), Firings()
    await store.put_timer("c", timer(clock, "t", 5))
    store.failing.add("drop")
    async with running(clock, store, fire) as loop:
        clock.advance(5)
        await settled()
        assert fire.calls == ["t"] and store.calls["drop"] == 1
        assert [t.key for t in await store.list_timers("c")] == ["t"]
        # Put off for a second, then two: fired again (its turn is recognised by the
        # session) and its removal tried again, nothing in between.
        for drops, delay in enumerate([1.0, 2.0], start=2):
            clock.advance(delay - 0.001)
            await settled()
            assert store.calls["drop"] == drops - 1
            clock.advance(0.001)
            await settled()
            assert store.calls["drop"] == drops and len(fire.calls) == drops
        store.failing.clear()
        clock.advance(4)
        await settled()
        assert await store.list_timers("c") == [] and loop.fired == 4


async def test_the_rows_of_timers_fired_while_a_removal_runs_go_in_the_next_one() -> None:
    clock, store, fire = ManualClock(), FlakyStore(), Firings()
    for i in range(300):
        await store.put_timer(f"c-{i % 7}", timer(clock, f"t-{i}", 10 + i / 1000))
    store.drop_gate = anyio.Event()
    async with running(clock, store, fire) as loop:
        clock.advance(11)
        await settled()
        # All fired; the first removal is held, the rest wait for it, all still stored.
        assert loop.fired == 300 and sorted(fire.calls) == sorted(f"t-{i}" for i in range(300))
        assert store.dropped[0] >= 1 and len(store.dropped) == 1
        assert await store.next_timer_due() is not None
        store.drop_gate.set()
        await settled()
        assert sum(store.dropped) == 300 and len(store.dropped) == 2
        assert await store.next_timer_due() is None
        assert len(fire.calls) == 300  # none fired twice while its removal waited


async def test_timers_fire_while_an_earlier_one_is_still_firing() -> None:
    clock, store, fire = ManualClock(), FlakyStore(), Firings()
    fire.gates["slow"] = anyio.Event()
    await store.put_timer("a", timer(clock, "slow", 10))
    await store.put_timer("b", timer(clock, "next", 20))
    async with running(clock, store, fire) as loop:
        clock.advance(10)
        await settled()
        assert fire.calls == ["slow"]
        reads = store.calls["due_timers"]
        clock.advance(10)
        await settled()
        # No barrier: the later timer was read and fired, the slow one is still out,
        # and nothing fired it a second time.
        assert fire.calls == ["slow", "next"] and store.calls["due_timers"] > reads
        assert [t.key for t in await store.list_timers("a")] == ["slow"]
        fire.gates["slow"].set()
        await settled()
        assert loop.fired == 2 and fire.calls == ["slow", "next"]
        assert await store.next_timer_due() is None
