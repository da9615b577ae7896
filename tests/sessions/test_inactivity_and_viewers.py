"""Time: idle sessions stop (persisting first), viewers keep them alive, touch postpones."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from sessionvisor import (
    FunctionAgent,
    Interrupt,
    MemoryStore,
    Shutdown,
    SQLiteStore,
    Status,
    StatusChanged,
)
from sessionvisor.testing import (
    EventRecorder,
    FlakyStore,
    ManualClock,
    ScriptedAgent,
    record_events,
    wait_for_status,
)

from ._support import (
    WAIT,
    CountingFactory,
    Cues,
    SharedCueAgent,
    counted_supervisor,
    saved_as,
    stored_state,
    user_texts,
)


async def nothing_happens(rec: EventRecorder, cls: type = Shutdown) -> None:
    """Let every task run until it blocks, then check that no ``cls`` event came.

    Time is a ``ManualClock`` and these stores save without a worker thread, so
    once every task blocks, whatever the last ``advance`` set off has happened.
    """
    await anyio.wait_all_tasks_blocked()
    assert rec.of(cls) == []


def is_utc(value: Any) -> bool:
    return value is not None and value.tzinfo is not None and value.utcoffset() == timedelta(0)


@pytest.mark.anyio
async def test_an_idle_session_persists_then_stops_once_after_inactivity_timeout(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    store = FlakyStore(MemoryStore(), clock=clock)
    sup, _, _ = counted_supervisor(
        store=store, clock=clock, supervisor_opts={"inactivity_timeout": 60}
    )
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "hello")
            await wait_for_status(sup, "c", Status.IDLE)

            clock.advance(59.9)
            await nothing_happens(rec)
            assert await sup.running("c")

            store.save_delay = 5.0  # the shutdown save takes 5 s: no Shutdown before it lands
            clock.advance(0.1)
            await clock.wait_for_sleepers(1)  # the shutdown save is under way
            try:
                await nothing_happens(rec)
            finally:
                clock.advance(5.0)  # the save lands (also after a failed check: the drain ends)
            (shutdown,) = await rec.wait_for(lambda e: isinstance(e, Shutdown))

            assert shutdown.reason == "inactivity"
            assert shutdown.status is Status.IDLE
            assert shutdown.interrupt_restorable is False
            assert is_utc(shutdown.last_activity_at) and is_utc(shutdown.shutdown_at)
            idle_for = shutdown.shutdown_at - shutdown.last_activity_at
            assert timedelta(seconds=64) <= idle_for <= timedelta(seconds=66)
            assert not await sup.running("c")

            record = await store.inner.load("c")
            assert record is not None
            assert record.lifecycle == "shutdown"
            assert record.last_seq == shutdown.seq  # the saved seq covers the Shutdown itself
            assert user_texts(await stored_state(store.inner, "c")) == ["hello"]

            clock.advance(1000)
            await anyio.wait_all_tasks_blocked()
            assert len(rec.of(Shutdown)) == 1


@pytest.mark.anyio
async def test_a_turn_longer_than_the_timeout_runs_to_the_end_and_idles_out_after(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    cues = Cues()
    sup, _, _ = counted_supervisor(
        CountingFactory(lambda: SharedCueAgent(cues)),
        clock=clock,
        supervisor_opts={"inactivity_timeout": 60},
    )
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "slow")
            await cues.started_slow.wait()
            clock.advance(120)
            await nothing_happens(rec)
            assert await sup.status("c") is Status.RUNNING

            cues.release()
            await wait_for_status(sup, "c", Status.IDLE)
            clock.advance(59)
            await nothing_happens(rec)
            clock.advance(1)
            (shutdown,) = await rec.wait_for(lambda e: isinstance(e, Shutdown))
            assert shutdown.reason == "inactivity"
            handle_state = await sup.load("c")
            assert handle_state is not None
            assert handle_state.messages[-1].text() == "ok: slow"


@pytest.mark.anyio
async def test_inactivity_timeout_none_never_stops_an_idle_session(anyio_backend: str) -> None:
    clock = ManualClock()
    sup, _, _ = counted_supervisor(clock=clock, supervisor_opts={"inactivity_timeout": None})
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "hello")
            await wait_for_status(sup, "c", Status.IDLE)
            clock.advance(10**7)
            await nothing_happens(rec)
            assert await sup.running("c")


@pytest.mark.anyio
async def test_an_interrupted_session_that_idles_out_comes_back_interrupted(
    anyio_backend: str, tmp_path: Path
) -> None:
    clock = ManualClock()
    # Wrapped so that saved_as sees the interrupt's save come back from SQLite's thread.
    store = FlakyStore(SQLiteStore(tmp_path / "chat.db"))
    agent = ScriptedAgent()
    sup, _, factory = counted_supervisor(
        CountingFactory(lambda: agent),
        store=store,
        clock=clock,
        supervisor_opts={"inactivity_timeout": 60},
    )
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "interrupt me")
            await wait_for_status(sup, "c", Status.INTERRUPTED)
            await saved_as(store, "c", "interrupt")
            clock.advance(60)
            (shutdown,) = await rec.wait_for(lambda e: isinstance(e, Shutdown))

            assert shutdown.status is Status.INTERRUPTED
            assert shutdown.interrupt_restorable is True
            kept = await stored_state(store, "c")
            assert kept.interrupt is not None
            assert kept.interrupt.data == {"question": "approve 'interrupt me'?"}

            info = await sup.start("c")
            assert info.started and info.handle.status is Status.INTERRUPTED
            assert factory.calls_for("c") == 2
            await sup.resume("c", "yes")
            await wait_for_status(sup, "c", Status.IDLE)
            assert agent.answers == ["yes"]
            assert (await stored_state(store, "c")).interrupt is None


@pytest.mark.anyio
async def test_shutdown_says_when_the_agent_cannot_restore_its_interrupt(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    store = MemoryStore()

    async def ask(turn: Any) -> Interrupt:
        return Interrupt(turn.state, {"tool": "transfer"})

    agent = FunctionAgent(ask, restorable=lambda interrupt: False)
    sup, _, _ = counted_supervisor(
        CountingFactory(lambda: agent),
        store=store,
        clock=clock,
        supervisor_opts={"inactivity_timeout": 60},
    )
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "pay")
            await wait_for_status(sup, "c", Status.INTERRUPTED)
            await saved_as(store, "c", "interrupt")
            clock.advance(60)
            (shutdown,) = await rec.wait_for(lambda e: isinstance(e, Shutdown))

            assert shutdown.status is Status.INTERRUPTED
            assert shutdown.interrupt_restorable is False
            kept = await stored_state(store, "c")
            assert kept.interrupt is not None and kept.interrupt.data == {"tool": "transfer"}


@pytest.mark.anyio
async def test_touch_postpones_the_inactivity_timeout(anyio_backend: str) -> None:
    clock = ManualClock()
    sup, _, _ = counted_supervisor(clock=clock, supervisor_opts={"inactivity_timeout": 60})
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            handle = (await sup.start("c")).handle
            clock.advance(50)
            handle.touch()
            clock.advance(50)
            await nothing_happens(rec)
            assert await sup.running("c")
            clock.advance(10)
            (shutdown,) = await rec.wait_for(lambda e: isinstance(e, Shutdown))
            assert shutdown.reason == "inactivity"


@pytest.mark.anyio
async def test_a_viewed_session_outlives_the_inactivity_timeout(anyio_backend: str) -> None:
    clock = ManualClock()
    sup, _, _ = counted_supervisor(clock=clock, supervisor_opts={"inactivity_timeout": 60})
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "hello")
            await wait_for_status(sup, "c", Status.IDLE)
            async with sup.viewing("c"):
                clock.advance(600)
                await nothing_happens(rec)
                assert await sup.running("c")
                await sup.send("c", "still here")
                await wait_for_status(sup, "c", Status.IDLE)
                clock.advance(600)
                await nothing_happens(rec)
                assert await sup.running("c")


@pytest.mark.parametrize("inactivity_timeout", [None, 3600.0])
@pytest.mark.anyio
async def test_the_last_viewer_leaving_stops_the_session_after_viewer_grace(
    anyio_backend: str, inactivity_timeout: float | None
) -> None:
    clock = ManualClock()
    store = MemoryStore()
    sup, _, _ = counted_supervisor(
        store=store,
        clock=clock,
        supervisor_opts={"inactivity_timeout": inactivity_timeout, "viewer_grace": 2.0},
    )
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "hello")
            await wait_for_status(sup, "c", Status.IDLE)
            async with sup.viewing("c"):
                async with sup.viewing("c"):
                    clock.advance(10)
                clock.advance(10)  # one viewer is still there
                await nothing_happens(rec)
                assert await sup.running("c")
            clock.advance(1.9)
            await nothing_happens(rec)
            assert await sup.running("c")
            clock.advance(0.1)
            (shutdown,) = await rec.wait_for(lambda e: isinstance(e, Shutdown))

            assert shutdown.reason == "no_viewers"
            assert shutdown.status is Status.IDLE
            assert not await sup.running("c")
            assert user_texts(await stored_state(store, "c")) == ["hello"]


@pytest.mark.anyio
async def test_a_viewer_back_within_viewer_grace_keeps_a_long_viewed_session(
    anyio_backend: str,
) -> None:
    """A page reload after reading longer than the inactivity timeout does not stop it."""
    clock = ManualClock()
    sup, _, _ = counted_supervisor(
        clock=clock, supervisor_opts={"inactivity_timeout": 60, "viewer_grace": 2.0}
    )
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "hello")
            await wait_for_status(sup, "c", Status.IDLE)
            async with sup.viewing("c"):
                clock.advance(600)
            clock.advance(1.0)  # the page reloads: its stream comes back within the grace
            await nothing_happens(rec)
            async with sup.viewing("c"):
                clock.advance(10)
                await nothing_happens(rec)
                assert await sup.running("c")


@pytest.mark.anyio
async def test_the_last_viewer_leaving_a_running_session_lets_the_turn_finish(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    cues = Cues()
    sup, _, _ = counted_supervisor(
        CountingFactory(lambda: SharedCueAgent(cues)),
        clock=clock,
        supervisor_opts={"inactivity_timeout": None, "viewer_grace": 1.0},
    )
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            async with sup.viewing("c"):
                await sup.send("c", "slow")
                await cues.started_slow.wait()
            clock.advance(5)
            await nothing_happens(rec)
            assert await sup.status("c") is Status.RUNNING
            cues.release()
            await wait_for_status(sup, "c", Status.IDLE)
            clock.advance(1.0)
            (shutdown,) = await rec.wait_for(lambda e: isinstance(e, Shutdown))
            assert shutdown.reason == "no_viewers"
            assert (await sup.load("c")).messages[-1].text() == "ok: slow"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_viewer_that_arrived_before_the_start_counts_once_it_starts(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    sup, _, _ = counted_supervisor(
        clock=clock, supervisor_opts={"inactivity_timeout": 60, "viewer_grace": 1.0}
    )
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            async with sup.viewing("c"):
                assert not await sup.running("c")
                await sup.send("c", "hello")
                await wait_for_status(sup, "c", Status.IDLE)
                clock.advance(600)
                await nothing_happens(rec)
                assert await sup.running("c")
            clock.advance(1.0)
            (shutdown,) = await rec.wait_for(lambda e: isinstance(e, Shutdown))
            assert shutdown.reason == "no_viewers"


@pytest.mark.anyio
async def test_viewing_does_not_wake_a_stopped_session(anyio_backend: str) -> None:
    clock = ManualClock()
    store = MemoryStore()
    sup, router, factory = counted_supervisor(store=store, clock=clock)
    with anyio.fail_after(WAIT):
        async with sup:
            await sup.send("c", "hello")
            await wait_for_status(sup, "c", Status.IDLE)
            await sup.stop("c")

            async with sup.viewing("c"), sup.subscribe("c") as events:
                snapshot = await events.__anext__()
                clock.advance(10)
                await anyio.wait_all_tasks_blocked()
                assert not await sup.running("c")
                assert await sup.status("c") is Status.NOT_RUNNING

            assert isinstance(snapshot, StatusChanged)
            assert snapshot.status is Status.NOT_RUNNING
            assert (router.calls_for("c"), factory.calls_for("c")) == (1, 1)
            assert user_texts(await stored_state(store, "c")) == ["hello"]
