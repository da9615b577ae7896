"""Subscribers: snapshots, replay with ``after``, gaps, overflow, and never blocking the actor."""

from __future__ import annotations

import anyio
import pytest

from sessionvisor import (
    Event,
    MessageAppended,
    Restarted,
    Shutdown,
    Status,
    StatusChanged,
    SubscriberOverflow,
)
from sessionvisor.testing import ManualClock, record_events, wait_for_status, wait_until

from ._support import (
    WAIT,
    CountingFactory,
    Cues,
    SharedCueAgent,
    counted_supervisor,
)


def is_idle(event: Event) -> bool:
    return isinstance(event, StatusChanged) and event.status is Status.IDLE and event.seq > 0


def describe(event: Event) -> tuple[str, str]:
    if isinstance(event, StatusChanged):
        return ("StatusChanged", event.status.value)
    if isinstance(event, MessageAppended):
        return ("MessageAppended", f"{event.message.role}: {event.message.text()}")
    return (type(event).__name__, "")


async def take(events: object, n: int) -> list[Event]:
    got: list[Event] = []
    with anyio.fail_after(WAIT):
        async for event in events:  # type: ignore[attr-defined]
            got.append(event)
            if len(got) == n:
                return got
    return got


@pytest.mark.anyio
async def test_a_subscription_opened_before_start_gets_a_not_running_snapshot_then_live_events(
    anyio_backend: str,
) -> None:
    sup, _, _ = counted_supervisor()
    with anyio.fail_after(WAIT):
        async with sup, sup.subscribe("c") as events:
            await sup.send("c", "hello")
            got = await take(events, 6)

    snapshot = got[0]
    assert isinstance(snapshot, StatusChanged)
    assert (snapshot.status, snapshot.seq, snapshot.gap) == (Status.NOT_RUNNING, 0, False)
    assert snapshot.conversation_id == "c" and snapshot.agent_id == "conversation-c"
    assert [describe(e) for e in got[1:]] == [
        ("StatusChanged", "idle"),
        ("StatusChanged", "running"),
        ("MessageAppended", "user: hello"),
        ("MessageAppended", "assistant: echo: hello"),
        ("StatusChanged", "idle"),
    ]
    assert [e.seq for e in got[1:]] == [1, 2, 3, 4, 5]


@pytest.mark.anyio
async def test_a_subscription_stays_open_across_restart_idle_shutdown_and_wake(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    cues = Cues()
    sup, _, _ = counted_supervisor(
        CountingFactory(lambda: SharedCueAgent(cues)),
        clock=clock,
        supervisor_opts={"restart_on_error": True, "inactivity_timeout": 60},
    )
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "crash")
            await rec.wait_for(lambda e: isinstance(e, Restarted))
            await wait_for_status(sup, "c", Status.IDLE)
            clock.advance(60)
            await rec.wait_for(lambda e: isinstance(e, Shutdown))
            await wait_until(lambda: sup.get("c") is None)

            await sup.send("c", "back again")
            await rec.wait_for(
                lambda e: (
                    isinstance(e, MessageAppended) and e.message.text() == "ok: crash | back again"
                )
            )
            await wait_for_status(sup, "c", Status.IDLE)
            await rec.wait_for(is_idle, count=4)

            assert not rec.ended
            seqs = [e.seq for e in rec.events]
            assert seqs == list(range(len(seqs)))  # snapshot 0, then 1, 2, ... without a gap
            kinds = [type(e).__name__ for e in rec.events]
            assert kinds.index("Restarted") < kinds.index("Shutdown")
            assert kinds[-1] == "StatusChanged"


@pytest.mark.anyio
async def test_after_replays_the_buffered_events_then_live_ones(anyio_backend: str) -> None:
    sup, _, _ = counted_supervisor()
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as everything:
            for text in ("one", "two"):
                await sup.send("c", text)
                await wait_for_status(sup, "c", Status.IDLE)
            await everything.wait_for(is_idle, count=3)
            mark = everything.of(MessageAppended)[1].seq  # "echo: one"
            missed = [e for e in everything.events if e.seq > mark]

            async with sup.subscribe("c", after=mark) as events:
                replayed = await take(events, len(missed))
                assert replayed == missed
                await sup.send("c", "three")
                live = await take(events, 4)

    assert [e.seq for e in live] == list(range(missed[-1].seq + 1, missed[-1].seq + 5))
    assert [describe(e) for e in live] == [
        ("StatusChanged", "running"),
        ("MessageAppended", "user: three"),
        ("MessageAppended", "assistant: echo: three"),
        ("StatusChanged", "idle"),
    ]


@pytest.mark.anyio
async def test_after_an_event_gone_from_the_replay_buffer_starts_with_a_gap_snapshot(
    anyio_backend: str,
) -> None:
    sup, _, _ = counted_supervisor(supervisor_opts={"replay_buffer": 4})
    with anyio.fail_after(WAIT):
        async with sup:
            for text in ("one", "two", "three"):
                await sup.send("c", text)
                await wait_for_status(sup, "c", Status.IDLE)

            async with sup.subscribe("c", after=2) as events:
                (snapshot,) = await take(events, 1)
                assert isinstance(snapshot, StatusChanged)
                assert snapshot.gap is True
                assert snapshot.status is Status.IDLE
                assert snapshot.seq == 13  # 1 (start) + 3 turns of 4 events
                await sup.send("c", "four")
                live = await take(events, 4)

    assert [e.seq for e in live] == [14, 15, 16, 17]
    assert not any(isinstance(e, StatusChanged) and e.gap for e in live)


@pytest.mark.anyio
async def test_after_the_last_seq_gives_only_live_events(anyio_backend: str) -> None:
    sup, _, _ = counted_supervisor()
    with anyio.fail_after(WAIT):
        async with sup:
            await sup.send("c", "one")
            await wait_for_status(sup, "c", Status.IDLE)
            async with sup.subscribe("c", after=5) as events:
                await sup.send("c", "two")
                live = await take(events, 4)
    assert [e.seq for e in live] == [6, 7, 8, 9]


@pytest.mark.anyio
async def test_a_subscriber_that_never_reads_is_cut_off_while_another_gets_every_event(
    anyio_backend: str,
) -> None:
    sup, _, _ = counted_supervisor(supervisor_opts={"subscriber_buffer": 8})
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as reader, sup.subscribe("c") as sleeper:
            for n in range(10):
                await sup.send("c", f"m{n}")
                await wait_for_status(sup, "c", Status.IDLE)
            await reader.wait_for(is_idle, count=11)

            kept: list[Event] = []
            with pytest.raises(SubscriberOverflow, match="'c'") as overflow:
                async for event in sleeper:
                    kept.append(event)

            # what it got before the cut is a prefix of the stream
            assert 0 < len(kept) <= 8
            assert [e.seq for e in kept] == list(range(kept[0].seq, kept[0].seq + len(kept)))
            assert f"after={kept[-1].seq}" in str(overflow.value)

            # the reader missed nothing: every seq once, in order
            seqs = [e.seq for e in reader.events]
            assert seqs == list(range(len(seqs)))
            assert reader.overflowed is None
            texts = [e.message.text() for e in reader.of(MessageAppended)]
            assert texts[::2] == [f"m{n}" for n in range(10)]

            # it can come back with after= and catch up from the replay buffer
            async with sup.subscribe("c", after=kept[-1].seq) as again:
                caught_up = await take(again, seqs[-1] - kept[-1].seq)
            assert [e.seq for e in caught_up] == list(range(kept[-1].seq + 1, seqs[-1] + 1))


@pytest.mark.anyio
async def test_a_slow_subscriber_does_not_block_the_actor(anyio_backend: str) -> None:
    cues = Cues()
    sup, _, _ = counted_supervisor(
        CountingFactory(lambda: SharedCueAgent(cues)), supervisor_opts={"subscriber_buffer": 4}
    )
    read: list[Event] = []
    with anyio.fail_after(WAIT):
        async with sup, anyio.create_task_group() as tg, sup.subscribe("c") as slow:

            async def crawl() -> None:
                try:
                    async for event in slow:
                        read.append(event)
                        await anyio.sleep_forever()  # never reads another event
                except SubscriberOverflow:
                    pass

            tg.start_soon(crawl)
            for n in range(30):
                await sup.send("c", f"m{n}")
                await wait_for_status(sup, "c", Status.IDLE)
            tg.cancel_scope.cancel()

    assert len(cues.turns) == 30
    assert len(read) == 1
