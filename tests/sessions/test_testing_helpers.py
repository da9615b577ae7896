"""``sessionvisor.testing``'s waits and recorder, as a user testing an agent meets them."""

from __future__ import annotations

import socket

import anyio
import anyio.lowlevel
import pytest

from sessionvisor import MessageAppended, SessionSupervisor, SingleRouter, Status, StatusChanged
from sessionvisor.testing import (
    EventRecorder,
    ManualClock,
    ScriptedAgent,
    free_port,
    record_events,
    subscriber_backlogs,
    wait_for_status,
    wait_until,
    wait_until_settled,
    wait_until_sync,
)

from ._support import WAIT


def _supervisor(agent: ScriptedAgent) -> SessionSupervisor:
    return SessionSupervisor(SingleRouter(lambda agent_id, config: agent), clock=ManualClock())


def test_a_clock_and_a_recorder_can_be_made_outside_an_event_loop() -> None:
    clock = ManualClock(10.0)
    recorder = EventRecorder()
    assert (clock.now(), clock.sleepers) == (10.0, 0)
    assert (recorder.events, recorder.ended, recorder.overflowed) == ([], False, None)


@pytest.mark.anyio
async def test_record_events_keeps_every_event_in_order_from_the_snapshot_on(
    anyio_backend: str,
) -> None:
    agent = ScriptedAgent()
    with anyio.fail_after(2 * WAIT):  # the inner waits time out first
        async with _supervisor(agent) as sup, record_events(sup, "c") as rec:
            await sup.send("c", "hello")
            await rec.wait_for(lambda e: isinstance(e, MessageAppended), count=2)

            assert isinstance(rec.events[0], StatusChanged)
            assert rec.events[0].status is Status.NOT_RUNNING
            assert [e.seq for e in rec.events] == list(range(len(rec.events)))
            appended = rec.of(MessageAppended)
            assert [e.message.text() for e in appended] == ["hello", "echo: hello"]
            assert rec.ended is False


@pytest.mark.anyio
async def test_wait_for_returns_every_match_and_refuses_to_wait_on_an_ended_subscription(
    anyio_backend: str,
) -> None:
    agent = ScriptedAgent()
    recorder = EventRecorder()
    with anyio.fail_after(2 * WAIT):  # the inner waits time out first
        async with anyio.create_task_group() as tg:
            async with _supervisor(agent) as sup:
                await tg.start(recorder.record, sup, "c")
                await sup.send("c", "one")
                await wait_until_settled(sup, "c")
                await sup.send("c", "two")
                replies = await recorder.wait_for(
                    lambda e: isinstance(e, MessageAppended) and e.message.role == "assistant",
                    count=2,
                )
            # Leaving the supervisor closed the subscription; the recording outlived it.
            await wait_until(lambda: recorder.ended)

    assert [e.message.text() for e in replies] == ["echo: one", "echo: two"]  # type: ignore[attr-defined]
    with pytest.raises(LookupError, match="ended"):
        await recorder.wait_for(lambda e: False)


@pytest.mark.anyio
async def test_wait_for_and_wait_until_time_out(anyio_backend: str) -> None:
    recorder = EventRecorder()
    with pytest.raises(TimeoutError):
        await recorder.wait_for(lambda e: True, timeout=0.01)
    with pytest.raises(TimeoutError):
        await wait_until(lambda: False, timeout=0.01)


@pytest.mark.anyio
async def test_wait_until_takes_a_plain_or_an_async_condition(anyio_backend: str) -> None:
    seen: list[int] = []

    async def grow() -> None:
        for n in range(3):
            seen.append(n)
            await anyio.lowlevel.checkpoint()

    async def three() -> bool:
        return len(seen) == 3

    async with anyio.create_task_group() as tg:
        tg.start_soon(grow)
        await wait_until(lambda: len(seen) >= 1, timeout=WAIT)
        await wait_until(three, timeout=WAIT)
    assert seen == [0, 1, 2]


@pytest.mark.anyio
async def test_wait_until_settled_waits_for_the_queue_behind_a_turn(anyio_backend: str) -> None:
    agent = ScriptedAgent()
    with anyio.fail_after(2 * WAIT):  # the inner waits time out first
        async with _supervisor(agent) as sup:
            assert await wait_until_settled(sup, "c") is Status.NOT_RUNNING

            await sup.send("c", "slow one")
            await agent.started_slow.wait()
            assert (await sup.send("c", "two")).queued
            with pytest.raises(TimeoutError):
                await wait_until_settled(sup, "c", timeout=0.05)  # the turn is still held up

            agent.release()
            # Settled only once the queued message had its own turn too.
            assert await wait_until_settled(sup, "c") is Status.IDLE
            assert agent.turns == ["slow one", "two"]

            await sup.send("c", "interrupt me")
            assert await wait_until_settled(sup, "c") is Status.INTERRUPTED


@pytest.mark.anyio
async def test_wait_until_settled_sees_work_that_another_task_set_off(anyio_backend: str) -> None:
    # The sends come from other tasks (as from an HTTP handler) that have not run
    # yet when the wait begins: settled must not mistake that moment for rest.
    agent = ScriptedAgent()
    with anyio.fail_after(2 * WAIT):  # the inner waits time out first
        async with _supervisor(agent) as sup, anyio.create_task_group() as tg:
            tg.start_soon(sup.send, "c", "hello")
            assert await wait_until_settled(sup, "c") is Status.IDLE
            assert agent.turns == ["hello"]

            tg.start_soon(sup.send, "c", "interrupt me")
            assert await wait_until_settled(sup, "c") is Status.INTERRUPTED


@pytest.mark.anyio
async def test_wait_for_is_woken_by_an_event_that_comes_later(anyio_backend: str) -> None:
    agent = ScriptedAgent()
    with anyio.fail_after(2 * WAIT):  # the inner waits time out first
        async with _supervisor(agent) as sup, record_events(sup, "c") as rec:
            await sup.send("c", "slow one")
            await agent.started_slow.wait()
            async with anyio.create_task_group() as tg:

                async def reply_seen() -> None:
                    matches = await rec.wait_for(
                        lambda e: isinstance(e, MessageAppended) and e.message.role == "assistant"
                    )
                    assert [e.message.text() for e in matches] == ["echo: slow one"]  # type: ignore[attr-defined]

                tg.start_soon(reply_seen)
                await anyio.wait_all_tasks_blocked()  # reply_seen now waits on the recorder
                agent.release()


@pytest.mark.anyio
async def test_wait_for_sleepers_returns_once_a_task_sleeps_on_the_clock(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    woke: list[float] = []

    async def nap() -> None:
        await clock.sleep_until(5.0)
        woke.append(clock.now())

    with pytest.raises(TimeoutError):
        await clock.wait_for_sleepers(1, timeout=0.01)
    async with anyio.create_task_group() as tg:
        tg.start_soon(nap)
        tg.start_soon(nap)
        await clock.wait_for_sleepers(2, timeout=WAIT)
        assert clock.sleepers == 2
        clock.advance(5.0)
    assert woke == [5.0, 5.0]


@pytest.mark.anyio
async def test_wait_until_counts_any_truthy_result_and_says_what_it_waited_for(
    anyio_backend: str,
) -> None:
    items: list[int] = []

    async def add_later() -> None:
        await anyio.sleep(0.01)
        items.append(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(add_later)
        took = await wait_until(lambda: items, timeout=WAIT, interval=0.005)
    assert items == [1] and 0 < took < WAIT

    with pytest.raises(TimeoutError, match=r"after 0.01 s waiting until the list fills"):
        await wait_until(lambda: items[1:], timeout=0.01, message="the list fills")
    described: list[str] = []

    def describe() -> str:
        described.append("asked")
        return f"two items (now {items})"

    with pytest.raises(TimeoutError, match=r"two items \(now \[1\]\)"):
        await wait_until(lambda: len(items) == 2, timeout=0.01, message=describe)
    assert described == ["asked"]  # only once it timed out


def test_wait_until_sync_polls_without_an_event_loop() -> None:
    calls: list[int] = []

    def third_time() -> bool:
        calls.append(1)
        return len(calls) >= 3

    assert wait_until_sync(third_time, timeout=WAIT, interval=0.001) >= 0
    assert len(calls) == 3
    with pytest.raises(TimeoutError, match="waiting until never"):
        wait_until_sync(lambda: False, timeout=0.02, message="never")


def test_free_port_can_be_bound_at_once() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # nothing else holds it
        assert sock.getsockname()[1] == port


@pytest.mark.anyio
async def test_subscriber_backlogs_shows_the_events_each_subscriber_has_not_read(
    anyio_backend: str,
) -> None:
    async with SessionSupervisor(SingleRouter(lambda agent_id, config: ScriptedAgent())) as sup:
        assert subscriber_backlogs(sup, "c") == []
        async with sup.subscribe("c") as reading, sup.subscribe("c"):
            assert subscriber_backlogs(sup, "c") == [1, 1]  # each one's snapshot
            await reading.__anext__()
            assert subscriber_backlogs(sup, "c") == [0, 1]
            await sup.send("c", "hi")
            await wait_for_status(sup, "c", Status.IDLE)
            first, second = subscriber_backlogs(sup, "c")
            assert first > 0 and second == first + 1
            assert len(subscriber_backlogs(sup, "c")) == sup.subscriber_count("c")
        assert subscriber_backlogs(sup, "c") == []
