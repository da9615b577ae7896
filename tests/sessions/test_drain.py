"""Draining: leaving the supervisor persists every live session, refuses new work, ends streams."""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.abc
import pytest

from sessionvisor import (
    MemoryStore,
    RegistryUnavailable,
    Shutdown,
    SQLiteStore,
    StateStore,
    Status,
)
from sessionvisor.testing import EventRecorder, ManualClock, wait_for_status, wait_until

from ._support import (
    CountingFactory,
    Cues,
    SharedCueAgent,
    assistant_texts,
    counted_supervisor,
    stored_state,
    user_texts,
)

SLOW = [f"slow-{n}" for n in range(10)]
DONE = [f"done-{n}" for n in range(40)]
FRESH = [f"fresh-{n}" for n in range(50)]
ALL = SLOW + DONE + FRESH


async def fill(sup: object, cues: Cues) -> None:
    """100 live sessions: 10 mid-turn, 40 that answered one message, 50 that never ran a turn."""
    for cid in DONE:
        await sup.send(cid, "hello")  # type: ignore[attr-defined]
    for cid in FRESH:
        await sup.start(cid)  # type: ignore[attr-defined]
    for cid in SLOW:
        await sup.send(cid, "slow")  # type: ignore[attr-defined]
    await cues.started_slow.wait()
    for cid in DONE:
        await wait_for_status(sup, cid, Status.IDLE)  # type: ignore[arg-type]
    for cid in SLOW:
        await wait_for_status(sup, cid, Status.RUNNING)  # type: ignore[arg-type]


async def check_drained(
    store: StateStore, recorders: dict[str, EventRecorder], cut: frozenset[str] = frozenset()
) -> None:
    for cid, rec in recorders.items():
        shutdowns = rec.of(Shutdown)
        assert [s.reason for s in shutdowns] == ["drain"], cid
        assert rec.ended, f"the subscription of {cid} did not end at drain"
        record = await store.load(cid)
        assert record is not None, f"{cid} was not persisted"
        # A turn the drain cut short hands its messages back to the queue, saved as
        # `queued` so that the next wake answers them.
        assert record.lifecycle == ("queued" if cid in cut else "shutdown"), cid
        assert record.last_seq == shutdowns[0].seq
    for cid in DONE:
        state = await stored_state(store, cid)
        assert (user_texts(state), assistant_texts(state)) == (["hello"], ["ok: hello"])
    for cid in FRESH:
        state = await stored_state(store, cid)
        assert state.messages == [] and state.queued == []


@pytest.mark.anyio
async def test_drain_lets_running_turns_finish_persists_every_session_and_refuses_new_work(
    anyio_backend: str, tmp_path: Path
) -> None:
    cues = Cues()
    store = SQLiteStore(tmp_path / "chat.db")
    sup, _, _ = counted_supervisor(CountingFactory(lambda: SharedCueAgent(cues)), store=store)
    recorders = {cid: EventRecorder() for cid in ALL}
    refused: list[str] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            async with sup:
                for cid in ALL:
                    await tg.start(recorders[cid].record, sup, cid)
                await fill(sup, cues)

                async def meanwhile() -> None:
                    await wait_until(lambda: sup.draining)
                    with pytest.raises(RegistryUnavailable):
                        await sup.start("latecomer")
                    refused.append("start")
                    with pytest.raises(RegistryUnavailable):
                        await sup.send("done-0", "one more")
                    refused.append("send")
                    with pytest.raises(RegistryUnavailable):
                        await sup.running("slow-0")
                    refused.append("running")
                    # the running turns are still going: release them inside the drain
                    assert not any(recorders[cid].of(Shutdown) for cid in SLOW)
                    cues.release()

                tg.start_soon(meanwhile)
            assert refused == ["start", "send", "running"]

    with pytest.raises(RegistryUnavailable):
        await sup.running("slow-0")
    await check_drained(store, recorders)
    for cid in SLOW:
        state = await stored_state(store, cid)
        assert (user_texts(state), assistant_texts(state)) == (["slow"], ["ok: slow"])
    assert await store.load("latecomer") is None


@pytest.mark.anyio
async def test_drain_cancels_turns_that_outlast_shutdown_timeout_and_keeps_their_messages(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    cues = Cues()
    store = MemoryStore()
    sup, _, _ = counted_supervisor(
        CountingFactory(lambda: SharedCueAgent(cues)),
        store=store,
        clock=clock,
        supervisor_opts={"shutdown_timeout": 10.0},
    )
    recorders = {cid: EventRecorder() for cid in ALL}
    drained = anyio.Event()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def tick() -> None:
                await wait_until(lambda: sup.draining)
                await anyio.wait_all_tasks_blocked()
                # within the timeout nothing is cut short
                assert not any(recorders[cid].of(Shutdown) for cid in SLOW)
                while not drained.is_set():
                    clock.advance(1.0)
                    await anyio.wait_all_tasks_blocked()

            async with sup:
                for cid in ALL:
                    await tg.start(recorders[cid].record, sup, cid)
                await fill(sup, cues)
                started_at = clock.now()
                tg.start_soon(tick)
            drained.set()

    assert clock.now() - started_at >= 10.0
    await check_drained(store, recorders, cut=frozenset(SLOW))
    for cid in SLOW:
        state = await stored_state(store, cid)
        assert (user_texts(state), assistant_texts(state)) == ([], [])
        assert [m.text() for m in state.queued] == ["slow"]
    assert cues.gate.is_set() is False  # nobody released them: the timeout did


@pytest.mark.anyio
async def test_calls_after_the_drain_raise_registry_unavailable(anyio_backend: str) -> None:
    sup, _, _ = counted_supervisor()
    async with sup:
        await sup.send("c", "hello")
        await wait_for_status(sup, "c", Status.IDLE)

    with pytest.raises(RegistryUnavailable):
        await sup.running("c")
    with pytest.raises(RegistryUnavailable):
        await sup.start("c")
    with pytest.raises(RegistryUnavailable):
        sup.get("c")


@pytest.mark.anyio
async def test_a_supervisor_left_by_cancellation_drains_at_once_and_keeps_the_message(
    anyio_backend: str,
) -> None:
    # With a hand-driven clock a running turn's shutdown_timeout would never pass: a
    # cancelled owner (say, a test's timeout) must still get out, without losing anything.
    from sessionvisor import MemoryStore, SessionSupervisor, SingleRouter
    from sessionvisor.testing import ManualClock, ScriptedAgent

    agent = ScriptedAgent()
    store = MemoryStore()
    sup = SessionSupervisor(SingleRouter(lambda a, c: agent), store=store, clock=ManualClock())
    with anyio.fail_after(10):
        with anyio.move_on_after(0.05):
            async with sup:
                await sup.send("c-1", "slow")
                await agent.started_slow.wait()
                await anyio.sleep_forever()
    record = await store.load("c-1")
    assert record is not None
    assert [m["content"] for m in record.state["queued"]] == ["slow"]  # handed back
    assert record.lifecycle == "queued"  # the next wake (or a recovery) answers it
    assert [m["content"] for m in record.state["messages"]] == []  # nothing half-done


@pytest.mark.anyio
@pytest.mark.parametrize("subscribed", [False, True], ids=["alone", "subscribed"])
async def test_a_supervisor_in_a_cancelled_task_group_stops_its_idle_sessions(
    anyio_backend: str, subscribed: bool
) -> None:
    """An idle session needs a new task to stop: one started in the cancelled group
    never ran, and leaving the supervisor waited for it for ever."""
    from sessionvisor import SessionSupervisor, SingleRouter
    from sessionvisor.testing import ScriptedAgent

    store = MemoryStore()
    sup = SessionSupervisor(SingleRouter(lambda a, c: ScriptedAgent()), store=store)

    async def supervise(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with sup:
            task_status.started()
            await anyio.sleep_forever()

    async def watch() -> None:
        async with sup.subscribe("c-1") as events:  # a subscriber keeps the topic open
            async for _ in events:
                pass

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(supervise)
            if subscribed:
                tg.start_soon(watch)
            await sup.send("c-1", "hello")
            await wait_for_status(sup, "c-1", Status.IDLE)
            tg.cancel_scope.cancel()
    record = await store.load("c-1")
    assert record is not None and record.lifecycle == "shutdown"
    assert [m["content"] for m in record.state["messages"]] == ["hello", "echo: hello"]
    with pytest.raises(RegistryUnavailable):
        sup.get("c-1")
