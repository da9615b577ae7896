"""``send``: delivery, the queue behind a running turn, and what a held queue does."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from sessionvisor import (
    Delivery,
    MemoryStore,
    MessageAppended,
    MessageQueued,
    QueueFull,
    Status,
    StatusChanged,
)
from sessionvisor.testing import FlakyStore, collect_until, wait_for_status, wait_until_settled

from ._support import (
    WAIT,
    AbandoningAgent,
    Backend,
    CueAgent,
    ends_in,
    statuses,
    stored_record,
    stored_state,
    supervisor,
    texts,
)


@pytest.mark.anyio
async def test_send_wakes_a_new_conversation_and_runs_a_turn(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        delivery = await sup.send("c-1", "hello")

        assert delivery == Delivery(queued=False, started=True)
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert texts(await stored_state(sup.store, "c-1")) == ["hello", "re: hello"]
        assert backend.agent.turns == [["hello"]]


@pytest.mark.anyio
async def test_send_returns_before_the_reply_is_done(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        with anyio.fail_after(WAIT):
            delivery = await sup.send("c-1", "slow one")
            await backend.agent.slow_started.wait()

        assert delivery == Delivery(queued=False, started=True)
        assert await sup.status("c-1") is Status.RUNNING
        # The user message is persisted before send returns.
        state = await stored_state(sup.store, "c-1")
        assert texts(state) == ["slow one"]
        backend.agent.release()
        assert await wait_until_settled(sup, "c-1") is Status.IDLE


@pytest.mark.anyio
async def test_send_to_a_live_idle_session_did_not_start_it(anyio_backend: str) -> None:
    async with supervisor(Backend()) as sup:
        await sup.start("c-1")
        delivery = await sup.send("c-1", "hello")
        assert delivery == Delivery(queued=False, started=False)


@pytest.mark.anyio
async def test_mid_turn_sends_are_queued_persisted_and_answered_by_one_next_turn(
    anyio_backend: str,
) -> None:
    store = FlakyStore(MemoryStore())
    backend = Backend()
    async with supervisor(backend, store=store) as sup, sup.subscribe("c-1") as events:
        await sup.send("c-1", "slow first")
        with anyio.fail_after(WAIT):
            await backend.agent.slow_started.wait()

        second = await sup.send("c-1", "second")
        third = await sup.send("c-1", "third")

        assert second == Delivery(queued=True, started=False)
        assert third == Delivery(queued=True, started=False)
        record = await stored_record(sup.store, "c-1")
        assert record is not None
        # Saved while the turn runs: the record says so, so that a crash now reruns
        # the turn before answering the queue.
        assert record.lifecycle == "turn_start"
        assert [m["content"] for m in record.state["queued"]] == ["second", "third"]
        assert store.saves[-1] == ("c-1", "turn_start")

        backend.agent.release()
        seen = await collect_until(events, ends_in(Status.IDLE))

    queued = [e.message.content for e in seen if isinstance(e, MessageQueued)]
    appended = [e.message.content for e in seen if isinstance(e, MessageAppended)]
    assert queued == ["second", "third"]
    assert appended == ["slow first", "re: slow first", "second", "third", "re: third"]
    # One running stretch for both turns: no `idle` between them.
    assert statuses(seen) == ["not_running", "idle", "running", "idle"]
    assert backend.agent.turns == [["slow first"], ["second", "third"]]
    state = await stored_state(sup.store, "c-1")
    assert state.queued == []
    assert texts(state) == ["slow first", "re: slow first", "second", "third", "re: third"]


@pytest.mark.anyio
async def test_send_past_max_queued_raises_queue_full(anyio_backend: str) -> None:
    backend = Backend(supervisor_opts={"max_queued": 2})
    async with supervisor(backend) as sup:
        await sup.send("c-1", "slow first")
        with anyio.fail_after(WAIT):
            await backend.agent.slow_started.wait()
        await sup.send("c-1", "q1")
        await sup.send("c-1", "q2")

        async with sup.subscribe("c-1") as events:
            with pytest.raises(QueueFull) as caught:
                await sup.send("c-1", "q3")
            assert events.pending() == 1  # only the snapshot: no MessageQueued for q3

        assert "c-1" in str(caught.value)
        assert "max_queued=2" in str(caught.value)
        state = await stored_state(sup.store, "c-1")
        assert [m.content for m in state.queued] == ["q1", "q2"]
        backend.agent.release()
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert backend.agent.turns[-1] == ["q1", "q2"]


@pytest.mark.anyio
async def test_max_queued_from_the_supervisor_defaults(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend, supervisor_opts={"max_queued": 1}) as sup:
        await sup.send("c-1", "slow first")
        with anyio.fail_after(WAIT):
            await backend.agent.slow_started.wait()
        await sup.send("c-1", "q1")
        with pytest.raises(QueueFull, match="c-1"):
            await sup.send("c-1", "q2")
        backend.agent.release()


async def _hold(sup: object, backend: Backend, how: str) -> None:
    """Bring c-1 to a held status with one queued message ``q1``."""
    from sessionvisor import SessionSupervisor

    assert isinstance(sup, SessionSupervisor)
    agent: CueAgent = backend.agent
    cue = {"paused": "slow pause", "error": "slow crash", "cancelled": "slow"}[how]
    await sup.send("c-1", cue)
    with anyio.fail_after(WAIT):
        await agent.slow_started.wait()
    assert (await sup.send("c-1", "q1")).queued is True
    if how == "cancelled":
        assert await sup.cancel("c-1") is Status.CANCELLED
    else:
        agent.release()
    await wait_for_status(sup, "c-1", how)


@pytest.mark.anyio
@pytest.mark.parametrize("held", ["paused", "error", "cancelled"])
async def test_queue_is_held_then_drained_by_the_next_send(anyio_backend: str, held: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _hold(sup, backend, held)
        turns = len(backend.agent.turns)

        # Held: the queued message waits, in memory and in the store.
        await anyio.wait_all_tasks_blocked()  # a turn that wrongly took the queue would run
        assert await sup.status("c-1") == held
        assert len(backend.agent.turns) == turns
        assert [m.content for m in (await stored_state(sup.store, "c-1")).queued] == ["q1"]

        async with sup.subscribe("c-1") as events:
            delivery = await sup.send("c-1", "q2")
            seen = await collect_until(events, ends_in(Status.IDLE))

        assert delivery == Delivery(queued=False, started=False)
        assert len(backend.agent.turns) == turns + 1
        assert backend.agent.turns[-1][-2:] == ["q1", "q2"]
        appended = [e.message.content for e in seen if isinstance(e, MessageAppended)]
        assert appended == ["q1", "q2", "re: q2"]
        state = await stored_state(sup.store, "c-1")
        assert state.queued == []
        assert texts(state)[-3:] == ["q1", "q2", "re: q2"]


@pytest.mark.anyio
async def test_failed_turn_keeps_the_user_message_and_reports_the_error(
    anyio_backend: str,
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup, sup.subscribe("c-1") as events:
        await sup.send("c-1", "crash now")
        seen = await collect_until(events, ends_in(Status.ERROR))

        error = seen[-1]
        assert isinstance(error, StatusChanged)
        assert error.error is not None and "crashed on cue" in error.error
        state = await stored_state(sup.store, "c-1")
        assert texts(state) == ["crash now"]
        record = await stored_record(sup.store, "c-1")
        assert record is not None and record.lifecycle == "error"
        assert await sup.running("c-1") is True


@pytest.mark.anyio
@pytest.mark.parametrize("agent_cls", [CueAgent, AbandoningAgent])
async def test_send_while_interrupted_abandons_the_interrupt(
    anyio_backend: str, agent_cls: type[CueAgent]
) -> None:
    backend = Backend(agent_cls())
    async with supervisor(backend) as sup:
        await sup.send("c-1", "ask me")
        await wait_for_status(sup, "c-1", Status.INTERRUPTED)

        delivery = await sup.send("c-1", "never mind")
        assert delivery.queued is False
        assert await wait_until_settled(sup, "c-1") is Status.IDLE

        state = await stored_state(sup.store, "c-1")
        assert state.interrupt is None
        assert texts(state)[-2:] == ["never mind", "re: never mind"]
        abandoned = {"kind": "question", "data": {"question": "ask me"}}

        def unnamed(interrupts: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: v for k, v in i.items() if k != "id"} for i in interrupts]

        if agent_cls is AbandoningAgent:
            # The agent's hook records it its own way, instead of the default.
            assert unnamed(state.metadata["talked_past"]) == [abandoned]
            assert "abandoned_interrupts" not in state.metadata
            assert [i.kind for i in backend.agent.abandoned] == ["question"]
        else:
            assert unnamed(state.metadata["abandoned_interrupts"]) == [abandoned]


@pytest.mark.anyio
async def test_queue_held_by_an_interrupt_is_drained_after_resume(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.send("c-1", "slow ask")
        with anyio.fail_after(WAIT):
            await backend.agent.slow_started.wait()
        await sup.send("c-1", "q1")
        backend.agent.release()
        await wait_for_status(sup, "c-1", Status.INTERRUPTED)
        await anyio.wait_all_tasks_blocked()  # a turn that wrongly took the queue would run
        assert await sup.status("c-1") is Status.INTERRUPTED
        assert [m.content for m in (await stored_state(sup.store, "c-1")).queued] == ["q1"]

        assert await sup.resume("c-1", "yes") is Status.RUNNING
        assert await wait_until_settled(sup, "c-1") is Status.IDLE

        assert backend.agent.answers == ["yes"]
        assert backend.agent.turns[-1] == ["q1"]
        state = await stored_state(sup.store, "c-1")
        assert state.queued == []
        assert state.interrupt is None
        assert texts(state)[-3:] == ["answered yes", "q1", "re: q1"]


@pytest.mark.anyio
async def test_queued_messages_survive_stop_and_run_on_wake(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.send("c-1", "slow pause")
        with anyio.fail_after(WAIT):
            await backend.agent.slow_started.wait()
        await sup.send("c-1", "q1")
        backend.agent.release()
        await wait_for_status(sup, "c-1", Status.PAUSED)
        assert await sup.stop("c-1") == "stopped"
        assert [m.content for m in (await stored_state(sup.store, "c-1")).queued] == ["q1"]

        delivery = await sup.send("c-1", "q2")

        assert delivery.started is True
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        state = await stored_state(sup.store, "c-1")
        assert state.queued == []
        assert texts(state)[-3:] == ["q1", "q2", "re: q2"]


@pytest.mark.anyio
async def test_list_content_parts_are_accepted(anyio_backend: str) -> None:
    backend = Backend()
    parts = [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]
    async with supervisor(backend) as sup:
        await sup.send("c-1", parts)
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        state = await stored_state(sup.store, "c-1")
        assert state.messages[0].content == parts
        assert backend.agent.turns == [["hi there"]]


@pytest.mark.anyio
@pytest.mark.parametrize("held", ["paused", "error", "cancelled"])
async def test_held_queue_stays_held_across_stop_and_a_plain_start(
    anyio_backend: str, held: str
) -> None:
    # The hold is lifted by the next send (or a resume), not by waking the session.
    backend = Backend()
    async with supervisor(backend) as sup:
        await _hold(sup, backend, held)
        turns = len(backend.agent.turns)
        assert await sup.stop("c-1") == "stopped"

        info = await sup.start("c-1")

        assert info.started is True
        await anyio.wait_all_tasks_blocked()  # a turn that wrongly took the queue would run
        assert len(backend.agent.turns) == turns
        assert [m.content for m in info.handle.snapshot().queued] == ["q1"]
        assert [m.content for m in (await stored_state(sup.store, "c-1")).queued] == ["q1"]

        await sup.send("c-1", "q2")
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert backend.agent.turns[-1][-2:] == ["q1", "q2"]
        assert len(backend.agent.turns) == turns + 1
