"""A store that is down, and a store someone else wrote to: nothing is lost, nothing clobbered."""

from __future__ import annotations

from pathlib import Path

import anyio
import attrs
import pytest
import structlog

from sessionvisor import (
    AgentEvent,
    MemoryStore,
    NotRunning,
    SessionSupervisor,
    Shutdown,
    SQLiteStore,
    Status,
    StoreUnavailable,
)
from sessionvisor.state import dump_state
from sessionvisor.testing import FlakyStore, ManualClock, record_events, wait_for_status, wait_until

from ._support import (
    WAIT,
    CountingFactory,
    Cues,
    SharedCueAgent,
    WatchedStore,
    assistant_texts,
    counted_supervisor,
    stored_state,
    stored_state_or_none,
    user_texts,
)


async def refused_send(sup: SessionSupervisor, cid: str, text: str, **kwargs: object) -> None:
    """A send while saves fail: not acknowledged (it is not stored), yet kept in memory."""
    with pytest.raises(StoreUnavailable, match=f"conversation {cid!r}: the message could not"):
        await sup.send(cid, text, **kwargs)  # type: ignore[arg-type]


def is_store_error(event: object) -> bool:
    return isinstance(event, AgentEvent) and event.name == "store_error"


@pytest.mark.anyio
async def test_failing_saves_refuse_the_send_but_keep_the_message_and_report_store_error(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    store = FlakyStore(MemoryStore(), clock=clock)
    store.fail_saves = True
    sup, _, _ = counted_supervisor(store=store, clock=clock)
    with structlog.testing.capture_logs() as logs, anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await refused_send(sup, "c", "one")
            await wait_for_status(sup, "c", Status.IDLE)
            await refused_send(sup, "c", "two")
            await wait_for_status(sup, "c", Status.IDLE)

            handle = sup.get("c")
            assert handle is not None
            snapshot = handle.snapshot()
            assert user_texts(snapshot) == ["one", "two"]
            assert assistant_texts(snapshot) == ["echo: one", "echo: two"]
            assert await stored_state_or_none(store.inner, "c") is None
            assert store.failed_saves >= 2

            errors = await rec.wait_for(is_store_error)
            assert "StoreUnavailable" in errors[0].data["error"]
            failures = [e for e in logs if e["event"] == "store_save_failed"]
            assert failures
            assert all(e["log_level"] == "error" for e in failures)
            assert all(e["conversation_id"] == "c" for e in failures)
            assert all(e["agent_id"] == "conversation-c" for e in failures)
            assert all("StoreUnavailable" in e["error"] for e in failures)


@pytest.mark.anyio
async def test_after_the_store_heals_the_next_save_carries_everything(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    store = FlakyStore(MemoryStore(), clock=clock)
    sup, _, _ = counted_supervisor(store=store, clock=clock)
    with anyio.fail_after(WAIT):
        async with sup:
            await sup.send("c", "one")
            await wait_for_status(sup, "c", Status.IDLE)
            store.fail_saves = True
            await refused_send(sup, "c", "two")
            await wait_for_status(sup, "c", Status.IDLE)
            await refused_send(sup, "c", "three")
            await wait_for_status(sup, "c", Status.IDLE)
            assert user_texts(await stored_state(store.inner, "c")) == ["one"]

            store.heal()
            await sup.send("c", "four")
            await wait_for_status(sup, "c", Status.IDLE)

            state = await stored_state(store.inner, "c")
            assert user_texts(state) == ["one", "two", "three", "four"]
            assert assistant_texts(state) == [
                "echo: one",
                "echo: two",
                "echo: three",
                "echo: four",
            ]


@pytest.mark.anyio
async def test_a_failed_save_is_retried_after_the_backoff_which_doubles(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    store = FlakyStore(MemoryStore(), clock=clock)
    store.fail_saves = True
    sup, _, _ = counted_supervisor(
        store=store, clock=clock, supervisor_opts={"save_retry_backoff": 1.0}
    )
    with structlog.testing.capture_logs() as logs, anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await refused_send(sup, "c", "one")
            await wait_for_status(sup, "c", Status.IDLE)
            await rec.wait_for(is_store_error)
            failed = store.failed_saves

            # first retry after 1 s, still failing
            clock.advance(0.9)
            await anyio.wait_all_tasks_blocked()
            assert store.failed_saves == failed
            clock.advance(0.1)
            await wait_until(lambda: store.failed_saves == failed + 1)

            # the next one waits twice as long, and succeeds
            store.heal()
            clock.advance(1.9)
            await anyio.wait_all_tasks_blocked()
            assert await stored_state_or_none(store.inner, "c") is None
            clock.advance(0.1)
            await wait_until(lambda: bool(store.saves))

            state = await stored_state(store.inner, "c")
            assert user_texts(state) == ["one"]
            assert assistant_texts(state) == ["echo: one"]
            assert any(
                e["event"] == "store_save_recovered" and e["conversation_id"] == "c" for e in logs
            )


@pytest.mark.anyio
async def test_an_idle_session_whose_store_is_down_does_not_stop_and_lose_its_messages(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    store = FlakyStore(MemoryStore(), clock=clock)
    sup, _, _ = counted_supervisor(
        store=store, clock=clock, supervisor_opts={"inactivity_timeout": 60}
    )
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "one")
            await wait_for_status(sup, "c", Status.IDLE)
            store.fail_saves = True
            await refused_send(sup, "c", "two")
            await wait_for_status(sup, "c", Status.IDLE)

            failed = store.failed_saves
            clock.advance(61)
            await wait_until(lambda: store.failed_saves > failed)  # the shutdown save
            await anyio.wait_all_tasks_blocked()
            assert rec.of(Shutdown) == []
            handle = sup.get("c")
            assert handle is not None
            assert user_texts(handle.snapshot()) == ["one", "two"]

            store.heal()
            clock.advance(60)  # the retry lands, and the session idles out for real
            (shutdown,) = await rec.wait_for(lambda e: isinstance(e, Shutdown))
            await wait_until(lambda: sup.get("c") is None)
            assert shutdown.reason == "inactivity"
            assert user_texts(await stored_state(store.inner, "c")) == ["one", "two"]


@pytest.mark.anyio
@pytest.mark.anyio
async def test_a_send_retried_with_its_id_is_acknowledged_once_the_store_holds_it(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    store = FlakyStore(MemoryStore(), clock=clock)
    sup, _, _ = counted_supervisor(store=store, clock=clock)
    with anyio.fail_after(WAIT):
        async with sup:
            await sup.send("c", "one")
            await wait_for_status(sup, "c", Status.IDLE)
            store.fail_saves = True
            await refused_send(sup, "c", "two", message_id="m-2")
            await wait_for_status(sup, "c", Status.IDLE)
            # The retry meets the same outage: still not acknowledged.
            await refused_send(sup, "c", "two", message_id="m-2")

            store.heal()
            delivery = await sup.send("c", "two", message_id="m-2")
            assert delivery.duplicate
            state = await stored_state(store.inner, "c")
            assert user_texts(state) == ["one", "two"]  # stored, and once
            assert assistant_texts(state) == ["echo: one", "echo: two"]


@pytest.mark.anyio
async def test_a_dismissal_that_cannot_be_stored_is_refused_and_the_notice_stays(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    store = FlakyStore(MemoryStore(), clock=clock)
    sup, _, _ = counted_supervisor(store=store, clock=clock)
    with anyio.fail_after(WAIT):
        async with sup:
            await sup.send("c", "notice")
            await wait_for_status(sup, "c", Status.INTERRUPTED)
            store.fail_saves = True
            with pytest.raises(StoreUnavailable, match="'c': the dismissal could not be stored"):
                await sup.dismiss("c")
            assert await sup.status("c") is Status.INTERRUPTED
            handle = sup.get("c")
            assert handle is not None
            interrupt = handle.snapshot().interrupt
            assert interrupt is not None and interrupt.kind == "notice"

            store.heal()
            assert await sup.dismiss("c") is Status.IDLE
            assert (await stored_state(store.inner, "c")).interrupt is None


@pytest.mark.anyio
async def test_save_retries_end_when_the_session_stops(anyio_backend: str) -> None:
    clock = ManualClock()
    store = FlakyStore(MemoryStore(), clock=clock)
    sup, _, _ = counted_supervisor(
        store=store, clock=clock, supervisor_opts={"save_retry_backoff": 1.0}
    )
    with structlog.testing.capture_logs() as logs, anyio.fail_after(WAIT):
        async with sup:
            await sup.send("c", "one")
            await wait_for_status(sup, "c", Status.IDLE)
            store.fail_saves = True
            await refused_send(sup, "c", "two")
            await wait_for_status(sup, "c", Status.IDLE)
            for _ in range(3):  # a few retries, each failing
                failed = store.failed_saves
                clock.advance(60)
                await wait_until(lambda failed=failed: store.failed_saves > failed)
            assert await sup.stop("c") == "stopped"
            await anyio.wait_all_tasks_blocked()
            after_stop = store.failed_saves
            for _ in range(20):  # twenty minutes of the clock: no retry is left
                clock.advance(60)
                await anyio.wait_all_tasks_blocked()
            assert store.failed_saves == after_stop
            retry_lines = [e for e in logs if e["event"] == "store_save_retry_failed"]
            assert len(retry_lines) == 1  # logged once for the outage, counted every time
            assert sup.metrics().background_failures["save_retry"] >= 3


async def test_a_stale_write_stops_the_session_as_superseded_and_it_writes_nothing_more(
    anyio_backend: str, tmp_path: Path
) -> None:
    inner = SQLiteStore(tmp_path / "chat.db")
    store = WatchedStore(inner)  # counts a save as soon as it begins, before SQLite's thread
    cues = Cues()
    sup, _, _ = counted_supervisor(CountingFactory(lambda: SharedCueAgent(cues)), store=store)
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "one")
            await wait_for_status(sup, "c", Status.IDLE)
            handle = sup.get("c")
            assert handle is not None

            # Another writer (another process) takes the conversation over.
            record = await inner.load("c")
            assert record is not None
            theirs = await stored_state(inner, "c")
            theirs.metadata["owner"] = "the other process"
            await inner.save(
                "c",
                attrs.evolve(record, state=dump_state(theirs)),
                expected_version=record.version,
                lifecycle="completion",
            )
            after_takeover = await inner.load("c")
            saves = len(store.saves)
            attempts = store.save_attempts

            with pytest.raises(NotRunning, match="'c'"):
                await handle.send("two")
            (shutdown,) = await rec.wait_for(lambda e: isinstance(e, Shutdown))
            assert shutdown.reason == "superseded"
            await wait_until(lambda: sup.get("c") is None)
            assert not await sup.running("c")
            assert handle.status is Status.NOT_RUNNING

            # A save begins in the session's own task, so once every task blocks any
            # later save is counted, even one still on SQLite's thread: there is
            # exactly the one that met the other writer's version.
            await anyio.wait_all_tasks_blocked()
            assert store.save_attempts == attempts + 1
            assert len(store.saves) == saves
            now = await inner.load("c")
            assert now is not None and after_takeover is not None
            assert now.version == after_takeover.version
            assert now.state == after_takeover.state
            assert user_texts(await stored_state(inner, "c")) == ["one"]

            # The next request starts from what the other writer stored.
            delivery = await sup.send("c", "three")
            assert delivery.started
            await wait_for_status(sup, "c", Status.IDLE)
            state = await stored_state(inner, "c")
            assert state.metadata["owner"] == "the other process"
            assert user_texts(state) == ["one", "three"]


@pytest.mark.anyio
async def test_a_send_that_meets_a_stale_write_is_delivered_on_top_of_the_other_writer(
    anyio_backend: str,
) -> None:
    store = MemoryStore()
    sup, _, _ = counted_supervisor(store=store)
    with anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            await sup.send("c", "one")
            await wait_for_status(sup, "c", Status.IDLE)
            record = await store.load("c")
            assert record is not None
            theirs = await stored_state(store, "c")
            theirs.metadata["owner"] = "the other process"
            await store.save(
                "c",
                attrs.evolve(record, state=dump_state(theirs)),
                expected_version=record.version,
                lifecycle="completion",
            )

            delivery = await sup.send("c", "two")

            assert delivery.started  # the superseded session gave way to a fresh one
            await rec.wait_for(lambda e: isinstance(e, Shutdown) and e.reason == "superseded")
            await wait_for_status(sup, "c", Status.IDLE)
            await wait_until(lambda: _answered(sup, "two"))
            state = await stored_state(store, "c")
            assert state.metadata["owner"] == "the other process"
            assert user_texts(state) == ["one", "two"]


def _answered(sup: object, text: str) -> bool:
    handle = sup.get("c")  # type: ignore[attr-defined]
    return handle is not None and f"echo: {text}" in assistant_texts(handle.snapshot())


@pytest.mark.anyio
async def test_a_cancel_that_cannot_be_stored_is_not_acknowledged_and_is_saved_later(
    anyio_backend: str,
) -> None:
    # The turn stops at once, but the caller is told the cancel is not stored yet:
    # a crash before the store recovers would run the turn again. Once the store
    # is back, the retried save records it and nothing reruns.
    clock = ManualClock()
    store = FlakyStore(MemoryStore(), clock=clock)
    sup, _, _ = counted_supervisor(store=store, clock=clock)
    with anyio.fail_after(WAIT):
        async with sup:
            await sup.send("c", "slow one")
            await wait_for_status(sup, "c", Status.RUNNING)
            store.fail_saves = True
            with pytest.raises(StoreUnavailable, match="'c': the turn was cancelled but"):
                await sup.cancel("c")
            assert await sup.status("c") is Status.CANCELLED

            store.heal()

            async def cancel_stored() -> bool:
                clock.advance(1.0)  # the writer's retry, whenever it was scheduled
                stored = await store.inner.load("c")
                return stored is not None and stored.lifecycle == "cancel"

            await wait_until(cancel_stored)
            state = await stored_state(store.inner, "c")
            assert user_texts(state) == ["slow one"]
            assert assistant_texts(state) == []
