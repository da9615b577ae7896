"""No timer or retry loop spins when the step it repeats keeps failing.

Each test lets a step fail for good (a fold, a save, a wake, a timer entry that
asks to run again at once) and moves a ``ManualClock`` through minutes of time
in one-second steps: the step runs a bounded number of times per minute, is
logged once, is counted in the metrics, and the rest of the supervisor keeps
answering.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import structlog

from sessionvisor import (
    FunctionAgent,
    MemoryStore,
    Message,
    SessionOpts,
    SessionSupervisor,
    SingleRouter,
    State,
    Status,
    StoredConversation,
    StoreUnavailable,
    Turn,
)
from sessionvisor.sessions._stats import RuntimeStats
from sessionvisor.sessions._timers import Deadlines
from sessionvisor.state import dump_state
from sessionvisor.testing import FlakyStore, ManualClock, wait_for_status, wait_until

from ._support import WAIT, counted_supervisor

MINUTE = 60


async def _minutes(clock: ManualClock, minutes: int) -> None:
    """Move the clock on second by second, letting every task run at each step."""
    for _ in range(minutes * MINUTE):
        clock.advance(1.0)
        await anyio.wait_all_tasks_blocked()


class _Stuck:
    """A timer entry whose step fails every time and asks to run again at once."""

    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines
        self.timer_at: float | None = None
        self.fired = 0

    def timer_fired(self, now: float) -> None:
        self.fired += 1
        if self.fired < 10_000:  # only so that a spinning loop ends and the test can fail
            self.deadlines.schedule(self, now)


@pytest.mark.anyio
async def test_a_timer_entry_that_keeps_asking_to_run_at_once_is_put_off(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    stats = RuntimeStats()
    deadlines = Deadlines(clock, stats)
    stuck = _Stuck(deadlines)
    with structlog.testing.capture_logs() as logs, anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(deadlines.run)
            deadlines.schedule(stuck, 0.0)
            await anyio.wait_all_tasks_blocked()
            first_minute = stuck.fired
            await _minutes(clock, 1)
            second_minute = stuck.fired - first_minute
            await _minutes(clock, 1)
            third_minute = stuck.fired - first_minute - second_minute
            tg.cancel_scope.cancel()
    # A few immediate re-runs are allowed (one due action may lead to the next),
    # then 1 s, 2 s, 4 s, ... up to a minute between tries.
    assert first_minute <= 4
    assert second_minute <= 30
    assert third_minute <= 10
    assert len([e for e in logs if e["event"] == "session_timer_put_off"]) == 1
    assert stats.background_failures["timer"] >= 6


def _deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"down": value}
    return value


@pytest.mark.anyio
async def test_a_fold_that_fails_is_tried_once_until_the_state_changes(
    anyio_backend: str,
) -> None:
    """The 558-byte request of old: a State no serializer can dump (here the agent put
    300 levels into its metadata; a client can no longer), then the fold timer."""

    async def agent(turn: Turn) -> None:
        if turn.state.messages[-1].text() == "poison":
            turn.state.metadata["deep"] = _deep(300)
        turn.delta("ok")

    def factory(agent_id: str, config: Any) -> tuple[Any, SessionOpts]:
        opts = {"hibernate_after": 5.0, "inactivity_timeout": None}
        return FunctionAgent(agent), SessionOpts(supervisor_opts=opts)

    clock = ManualClock()
    sup = SessionSupervisor(SingleRouter(factory), store=MemoryStore(), clock=clock)
    with structlog.testing.capture_logs() as logs, anyio.fail_after(WAIT):
        async with sup:
            await sup.send("c", "hello")
            await wait_for_status(sup, "c", Status.IDLE)
            await sup.send("c", "poison")
            await wait_for_status(sup, "c", Status.IDLE)
            await _minutes(clock, 3)

            refused = [e for e in logs if e["event"] == "hibernate_refused"]
            assert len(refused) == 1
            assert refused[0]["conversation_id"] == "c"
            assert sup.metrics().background_failures["fold"] == 1
            # The supervisor still answers: another conversation runs a turn.
            await sup.send("other", "hi")
            await wait_for_status(sup, "other", Status.IDLE)
            handle = sup.get("c")
            assert handle is not None and handle.status is Status.IDLE


@pytest.mark.anyio
async def test_a_save_that_keeps_failing_is_retried_with_a_backoff_and_logged_once(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    store = FlakyStore(MemoryStore(), clock=clock)
    sup, _, _ = counted_supervisor(
        store=store,
        clock=clock,
        supervisor_opts={"save_retry_backoff": 1.0, "inactivity_timeout": None},
    )
    with structlog.testing.capture_logs() as logs, anyio.fail_after(WAIT):
        async with sup:
            await sup.send("c", "one")
            await wait_for_status(sup, "c", Status.IDLE)
            store.fail_saves = True
            with pytest.raises(StoreUnavailable):
                await sup.send("c", "two")
            await wait_for_status(sup, "c", Status.IDLE)
            before = store.failed_saves
            await _minutes(clock, 10)
            # 1, 2, 4, 8, 16, then every 30 s: about 24 tries in ten minutes.
            assert 5 <= store.failed_saves - before <= 30
            retry_lines = [e for e in logs if e["event"] == "store_save_retry_failed"]
            assert len(retry_lines) == 1
            assert sup.metrics().background_failures["save_retry"] >= 5


class _BrokenFactory:
    def __init__(self) -> None:
        self.calls = 0

    def create_agent(self, agent_id: str, config: Any) -> Any:
        self.calls += 1
        raise RuntimeError("the factory is broken")


@pytest.mark.anyio
async def test_a_wake_that_fails_is_not_retried_in_a_loop(anyio_backend: str) -> None:
    """Recovery wakes a conversation with unanswered work; its factory keeps failing.
    It is left for its next request instead of being woken again and again."""
    store = MemoryStore()
    state = State(messages=[Message(role="user", content="unanswered")])
    await store.save(
        "c",
        StoredConversation(state=dump_state(state)),
        expected_version=None,
        lifecycle="turn_start",
    )
    factory = _BrokenFactory()
    clock = ManualClock()
    sup = SessionSupervisor(SingleRouter(factory.create_agent), store=store, clock=clock)
    with anyio.fail_after(WAIT):
        async with sup:
            await wait_until(lambda: factory.calls >= 1)
            await _minutes(clock, 5)
            assert factory.calls == 1
            assert await sup.running("c") is False
