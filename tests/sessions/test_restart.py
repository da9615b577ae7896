"""Supervision: failed turns, crashes, restarts by policy, and giving up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from sessionvisor import (
    MemoryStore,
    Restarted,
    SessionFailed,
    SessionFailedError,
    SQLiteStore,
    Status,
    StatusChanged,
)
from sessionvisor.state import dump_state
from sessionvisor.testing import (
    ManualClock,
    ScriptedAgent,
    record_events,
    wait_for_status,
    wait_until,
)

from ._support import (
    WAIT,
    CountingFactory,
    Cues,
    SharedCueAgent,
    assistant_texts,
    counted_supervisor,
    stored_state,
    user_texts,
)

RESTARTING = {"restart_on_error": True}


def cue_factory(cues: Cues, **opts: Any) -> CountingFactory:
    return CountingFactory(lambda: SharedCueAgent(cues), supervisor_opts=opts or None)


async def lifecycle(store: Any, cid: str) -> str | None:
    record = await store.load(cid)
    return None if record is None else record.lifecycle


@pytest.mark.anyio
async def test_crash_every_third_message_keeps_every_user_message_once_in_order(
    anyio_backend: str, tmp_path: Path
) -> None:
    cues = Cues()
    factory = cue_factory(cues, restart_on_error=True, max_restarts=1000, max_queued=1000)
    store = SQLiteStore(tmp_path / "chat.db")
    sup, _, _ = counted_supervisor(
        factory, store=store, supervisor_opts={"subscriber_buffer": 100_000}
    )
    sent = [f"m{i}" + (" crash" if i % 3 == 0 else "") for i in range(1, 301)]
    with anyio.fail_after(60):
        async with sup, record_events(sup, "c") as rec:
            for text in sent:
                await sup.send("c", text)
            await wait_until(lambda: any(sent[-1] in texts for texts in cues.turns), timeout=20)
            await wait_for_status(sup, "c", Status.IDLE)
            assert await sup.stop("c") == "stopped"

            state = await stored_state(store, "c")
            assert user_texts(state) == sent
            assert state.queued == []
            assert cues.crashes > 0
            assert len(rec.of(Restarted)) == cues.crashes
            assert rec.of(SessionFailed) == []
            # a turn after a crash answers what the crash left unanswered: only the
            # messages of a last crashed turn may still lack a reply
            answered = {t for reply in assistant_texts(state) for t in reply[4:].split(" | ")}
            unanswered = [t for t in sent if t not in answered]
            assert unanswered == sent[len(sent) - len(unanswered) :]


@pytest.mark.anyio
async def test_crash_emits_restarted_with_attempt_and_error_and_comes_back_idle(
    anyio_backend: str,
) -> None:
    cues = Cues()
    sup, _, _ = counted_supervisor(cue_factory(cues, **RESTARTING))
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "please crash")
            (restarted,) = await rec.wait_for(lambda e: isinstance(e, Restarted))
            await wait_for_status(sup, "c", Status.IDLE)

            assert restarted.attempt == 1
            assert "RuntimeError" in restarted.error
            assert "please crash" in restarted.error
            settled = await rec.wait_for(
                lambda e: isinstance(e, StatusChanged) and e.seq > restarted.seq
            )
            assert settled[0].status is Status.IDLE
            handle = sup.get("c")
            assert handle is not None and handle.info().restarts == 1


@pytest.mark.anyio
async def test_restart_consults_router_and_factory_again_and_builds_a_new_agent(
    anyio_backend: str,
) -> None:
    cues = Cues()
    sup, router, factory = counted_supervisor(cue_factory(cues, **RESTARTING))
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.start("c")
            assert (router.calls_for("c"), factory.calls_for("c")) == (1, 1)
            first = factory.agent

            await sup.send("c", "crash now")
            await rec.wait_for(lambda e: isinstance(e, Restarted))

            assert (router.calls_for("c"), factory.calls_for("c")) == (2, 2)
            assert factory.agent is not first
            # the new agent serves the next turn
            await sup.send("c", "hello")
            await rec.wait_for(
                lambda e: isinstance(e, StatusChanged) and e.status is Status.IDLE, count=3
            )
            assert cues.turns[-1] == ["crash now", "hello"]


@pytest.mark.anyio
async def test_restart_reloads_state_from_the_store_not_from_memory(
    anyio_backend: str, tmp_path: Path
) -> None:
    clock = ManualClock()
    cues = Cues()
    store = SQLiteStore(tmp_path / "chat.db")
    sup, _, _ = counted_supervisor(
        cue_factory(cues, restart_on_error=True, restart_backoff=1.0), store=store, clock=clock
    )
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "first")
            await wait_for_status(sup, "c", Status.IDLE)
            await sup.send("c", "then crash")
            await wait_until(lambda: _is(lifecycle(store, "c"), "error"))
            assert rec.of(Restarted) == []  # waiting out the backoff

            # Someone edits the stored conversation while the actor is down.
            record = await store.load("c")
            assert record is not None
            state = await stored_state(store, "c")
            state.metadata["edited"] = "by an operator"
            await store.save(
                "c",
                attrs.evolve(record, state=dump_state(state)),
                expected_version=record.version,
                lifecycle="completion",
            )

            clock.advance(1.0)
            await rec.wait_for(lambda e: isinstance(e, Restarted))
            await wait_for_status(sup, "c", Status.IDLE)
            handle = sup.get("c")
            assert handle is not None
            assert handle.snapshot().metadata["edited"] == "by an operator"

            # and the reloaded session goes on saving on top of the edit
            await sup.send("c", "after")
            await wait_until(lambda: _has_user(store, "c", "after"))
            await wait_for_status(sup, "c", Status.IDLE)
            assert sup.get("c") is handle
            final = await stored_state(store, "c")
            assert final.metadata["edited"] == "by an operator"
            assert user_texts(final) == ["first", "then crash", "after"]


async def _is(awaitable: Any, value: Any) -> bool:
    return (await awaitable) == value


async def _has_user(store: Any, cid: str, text: str) -> bool:
    record = await store.load(cid)
    return record is not None and text in user_texts(await stored_state(store, cid))


@pytest.mark.anyio
async def test_messages_queued_before_a_crash_run_as_the_next_turn(anyio_backend: str) -> None:
    cues = Cues()
    store = MemoryStore()
    sup, _, _ = counted_supervisor(cue_factory(cues, **RESTARTING), store=store)
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "slow crash")
            await cues.started_slow.wait()
            assert (await sup.send("c", "queued one")).queued
            assert (await sup.send("c", "queued two")).queued
            cues.release()

            await rec.wait_for(lambda e: isinstance(e, Restarted))
            await wait_until(lambda: len(cues.turns) == 2)
            await wait_for_status(sup, "c", Status.IDLE)

    assert cues.turns == [["slow crash"], ["slow crash", "queued one", "queued two"]]
    state = await stored_state(store, "c")
    assert user_texts(state) == ["slow crash", "queued one", "queued two"]
    assert state.queued == []
    assert assistant_texts(state) == ["ok: slow crash | queued one | queued two"]


@pytest.mark.anyio
async def test_on_start_hook_that_raises_is_a_crash_and_restarts(anyio_backend: str) -> None:
    agent = ScriptedAgent(crash_on_start=1)
    factory = CountingFactory(lambda: agent)
    sup, router, _ = counted_supervisor(factory)
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            info = await sup.start("c")

            assert info.started
            (restarted,) = await rec.wait_for(lambda e: isinstance(e, Restarted))
            assert "on_start crashed on cue" in restarted.error
            assert agent.starts == 2
            assert (router.calls_for("c"), factory.calls_for("c")) == (2, 2)
            assert info.handle.status is Status.IDLE
            await sup.send("c", "hello")
            await wait_until(lambda: agent.turns == ["hello"])


@pytest.mark.anyio
async def test_on_start_that_keeps_raising_fails_the_start_and_registers_nothing(
    anyio_backend: str,
) -> None:
    cues = Cues(crash_on_start=4)
    store = MemoryStore()
    sup, _, _ = counted_supervisor(cue_factory(cues), store=store)
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            with pytest.raises(SessionFailedError, match="'c'"):
                await sup.start("c")

            assert not await sup.running("c")
            assert sup.get("c") is None
            assert cues.starts == 4
            await rec.wait_for(lambda e: isinstance(e, SessionFailed))
            # the next request starts it again (the hook no longer fails)
            info = await sup.start("c")
            assert info.started and info.handle.status is Status.IDLE


@pytest.mark.anyio
async def test_fourth_crash_within_max_seconds_fails_the_session(anyio_backend: str) -> None:
    clock = ManualClock()
    cues = Cues()
    store = MemoryStore()
    sup, router, factory = counted_supervisor(
        cue_factory(cues, **RESTARTING), store=store, clock=clock
    )
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            handle = (await sup.start("c")).handle
            for n in range(1, 4):
                await sup.send("c", f"crash {n}")
                await rec.wait_for(lambda e: isinstance(e, Restarted), count=n)
                await wait_for_status(sup, "c", Status.IDLE)
                clock.advance(1.0)  # all four crashes fall inside 5 s
            await sup.send("c", "crash 4")
            (failed,) = await rec.wait_for(lambda e: isinstance(e, SessionFailed))

            assert "crash 4" in failed.error
            assert [e.attempt for e in rec.of(Restarted)] == [1, 2, 3]
            assert not await sup.running("c")
            assert sup.get("c") is None
            assert await sup.status("c") is Status.NOT_RUNNING
            with pytest.raises(SessionFailedError, match="'c'"):
                await handle.send("anyone there?")
            with pytest.raises(SessionFailedError):
                await handle.stop()

            state = await stored_state(store, "c")
            assert user_texts(state) == ["crash 1", "crash 2", "crash 3", "crash 4"]

            # The subscription outlives the failure and sees the fresh start.
            seen = len(rec.events)
            delivery = await sup.send("c", "hello again")
            assert delivery.started
            await wait_for_status(sup, "c", Status.IDLE)
            await rec.wait_for(
                lambda e: isinstance(e, StatusChanged) and e.status is Status.IDLE and e.seq > 0,
                count=1,
            )
            assert any(isinstance(e, StatusChanged) for e in rec.events[seen:])
            assert not rec.ended
            assert router.calls_for("c") == 5 and factory.calls_for("c") == 5
            handle2 = sup.get("c")
            assert handle2 is not None and handle2 is not handle
            assert user_texts(handle2.snapshot()) == [
                "crash 1",
                "crash 2",
                "crash 3",
                "crash 4",
                "hello again",
            ]
            assert handle2.info().restarts == 0


@pytest.mark.anyio
async def test_crashes_spaced_beyond_max_seconds_keep_restarting(anyio_backend: str) -> None:
    clock = ManualClock()
    cues = Cues()
    sup, _, _ = counted_supervisor(cue_factory(cues, **RESTARTING), clock=clock)
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            for n in range(1, 7):
                await sup.send("c", f"crash {n}")
                await rec.wait_for(lambda e: isinstance(e, Restarted), count=n)
                await wait_for_status(sup, "c", Status.IDLE)
                clock.advance(5.5)

            assert rec.of(SessionFailed) == []
            assert [e.attempt for e in rec.of(Restarted)] == [1] * 6
            assert await sup.running("c")
            handle = sup.get("c")
            assert handle is not None and handle.info().restarts == 6


@pytest.mark.anyio
async def test_temporary_policy_gives_up_on_the_first_crash(anyio_backend: str) -> None:
    cues = Cues()
    store = MemoryStore()
    sup, _, factory = counted_supervisor(
        cue_factory(cues, restart_on_error=True, restart="temporary"), store=store
    )
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            handle = (await sup.start("c")).handle
            await sup.send("c", "crash")
            await rec.wait_for(lambda e: isinstance(e, SessionFailed))

            assert rec.of(Restarted) == []
            assert factory.calls_for("c") == 1
            assert not await sup.running("c")
            with pytest.raises(SessionFailedError):
                await handle.send("hi")
            assert user_texts(await stored_state(store, "c")) == ["crash"]


@pytest.mark.anyio
async def test_restart_backoff_delays_each_restart_and_doubles(anyio_backend: str) -> None:
    clock = ManualClock()
    cues = Cues()
    store = MemoryStore()
    sup, _, factory = counted_supervisor(
        cue_factory(cues, restart_on_error=True, restart_backoff=1.0, max_seconds=60.0),
        store=store,
        clock=clock,
    )
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.start("c")
            for n, backoff in ((1, 1.0), (2, 2.0), (3, 4.0)):
                sleepers = clock.sleepers
                await sup.send("c", f"crash {n}")
                await clock.wait_for_sleepers(sleepers + 1)  # the restart waits
                await anyio.wait_all_tasks_blocked()
                assert len(rec.of(Restarted)) == n - 1
                assert factory.calls_for("c") == n

                clock.advance(backoff - 0.1)
                await anyio.wait_all_tasks_blocked()
                assert len(rec.of(Restarted)) == n - 1

                clock.advance(0.1)
                await rec.wait_for(lambda e: isinstance(e, Restarted), count=n)
                await wait_for_status(sup, "c", Status.IDLE)
                assert factory.calls_for("c") == n + 1


@pytest.mark.anyio
async def test_a_neighbouring_session_keeps_serving_while_another_crashes(
    anyio_backend: str,
) -> None:
    cues = Cues()
    store = MemoryStore()
    sup, _, _ = counted_supervisor(cue_factory(cues, **RESTARTING), store=store)
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "sick") as sick, record_events(sup, "well") as well:
            for n in range(1, 6):
                await sup.send("sick", f"crash {n}")
                await sup.send("well", f"hello {n}")
                await well.wait_for(
                    lambda e: isinstance(e, StatusChanged) and e.status is Status.IDLE,
                    count=n + 1,
                )
                # each crash ends in a restart or, the fourth time, in giving up
                await wait_until(
                    lambda n=n: len(sick.of(Restarted)) + len(sick.of(SessionFailed)) >= n
                )

            assert len(sick.of(SessionFailed)) == 1
            assert len(sick.of(Restarted)) == 4
            state = await stored_state(store, "well")
            assert user_texts(state) == [f"hello {n}" for n in range(1, 6)]
            assert assistant_texts(state) == [f"ok: hello {n}" for n in range(1, 6)]
            assert well.of(Restarted) == [] and well.of(SessionFailed) == []
            assert await sup.running("well")


@pytest.mark.anyio
async def test_failed_turn_without_restart_on_error_keeps_the_actor_in_error(
    anyio_backend: str, tmp_path: Path
) -> None:
    cues = Cues()
    store = SQLiteStore(tmp_path / "chat.db")
    sup, router, factory = counted_supervisor(cue_factory(cues), store=store)
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            handle = (await sup.start("c")).handle
            await sup.send("c", "crash please")
            (failed,) = await rec.wait_for(
                lambda e: isinstance(e, StatusChanged) and e.status is Status.ERROR
            )

            assert failed.error is not None and "crashed on 'crash please'" in failed.error
            assert await sup.status("c") is Status.ERROR
            assert sup.get("c") is handle
            assert rec.of(Restarted) == []
            assert (router.calls_for("c"), factory.calls_for("c")) == (1, 1)
            state = await stored_state(store, "c")
            assert user_texts(state) == ["crash please"]
            assert assistant_texts(state) == []

            await handle.send("and now?")
            await wait_for_status(sup, "c", Status.IDLE)
            assert assistant_texts(handle.snapshot()) == ["ok: crash please | and now?"]
