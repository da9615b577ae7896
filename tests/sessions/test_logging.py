"""Logging: what an operator reads. Every runtime line about a session names it."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import attrs
import pytest
import structlog

from sessionvisor import (
    MemoryStore,
    SessionFailed,
    Shutdown,
    Status,
    StoredConversation,
    StoreUnavailable,
)
from sessionvisor.state import dump_state
from sessionvisor.testing import FlakyStore, ManualClock, record_events, wait_for_status, wait_until

from ._support import (
    WAIT,
    CountingFactory,
    Cues,
    SharedCueAgent,
    counted_supervisor,
    saved_as,
    stored_state,
)

#: Lines about the supervisor as a whole, not about one session.
SUPERVISOR_EVENTS = {
    "supervisor_draining",
    "supervisor_drained",
    "supervisor_recovery_started",
    "supervisor_recovery_finished",
}


def lines(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


def assert_every_session_line_names_it(logs: list[dict[str, Any]]) -> None:
    about_sessions = [e for e in logs if e["event"] not in SUPERVISOR_EVENTS]
    assert about_sessions
    unnamed = [e for e in about_sessions if not e.get("conversation_id") or not e.get("agent_id")]
    assert unnamed == []
    for entry in about_sessions:
        assert entry["agent_id"] == f"conversation-{entry['conversation_id']}"


@pytest.mark.anyio
async def test_a_start_is_logged_with_started_and_route_key(anyio_backend: str) -> None:
    sup, _, _ = counted_supervisor()
    with structlog.testing.capture_logs() as logs, anyio.fail_after(WAIT):
        async with sup:
            await sup.start("c")
            await sup.start("c")  # already live: nothing new started

    (started,) = lines(logs, "session_started")
    assert started["started"] is True
    assert started["route_key"] == "default"
    assert started["conversation_id"] == "c"
    assert started["agent_id"] == "conversation-c"
    assert started["log_level"] == "info"


@pytest.mark.anyio
async def test_restarts_and_giving_up_are_logged_with_the_error(anyio_backend: str) -> None:
    cues = Cues()
    sup, _, _ = counted_supervisor(
        CountingFactory(lambda: SharedCueAgent(cues)), supervisor_opts={"restart_on_error": True}
    )
    with structlog.testing.capture_logs() as logs, anyio.fail_after(WAIT):
        async with sup, record_events(sup, "c") as rec:
            for n in range(4):
                await sup.send("c", f"crash {n}")
                await wait_until(lambda n=n: cues.crashes == n + 1)
                await wait_until(
                    lambda: sup.get("c") is None or sup.get("c").status is Status.IDLE  # type: ignore[union-attr]
                )
            await rec.wait_for(lambda e: isinstance(e, SessionFailed))

    restarting = lines(logs, "session_restarting")
    assert [e["attempt"] for e in restarting] == [1, 2, 3]
    assert [e["error"] for e in restarting] == [
        f"RuntimeError: crashed on 'crash {n}'" for n in range(3)
    ]
    assert all(e["log_level"] == "warning" for e in restarting)
    (failed,) = lines(logs, "session_failed")
    assert failed["error"] == "RuntimeError: crashed on 'crash 3'"
    assert failed["log_level"] == "error"
    failed_turns = lines(logs, "turn_failed")
    assert len(failed_turns) == 4
    assert all("RuntimeError" in e["error"] for e in failed_turns)
    assert_every_session_line_names_it(logs)


@pytest.mark.anyio
async def test_a_start_that_gives_up_is_logged_as_a_failure(anyio_backend: str) -> None:
    cues = Cues(crash_on_start=10)
    sup, _, _ = counted_supervisor(CountingFactory(lambda: SharedCueAgent(cues)))
    with structlog.testing.capture_logs() as logs, anyio.fail_after(WAIT):
        async with sup:
            with pytest.raises(Exception, match="could not start"):
                await sup.start("c")

    (failed,) = lines(logs, "session_failed")
    assert "on_start failed on cue" in failed["error"]
    assert_every_session_line_names_it(logs)


@pytest.mark.anyio
async def test_shutdowns_are_logged_with_their_reason_and_drains_are_logged(
    anyio_backend: str,
) -> None:
    clock = ManualClock()
    sup, _, _ = counted_supervisor(
        clock=clock, supervisor_opts={"inactivity_timeout": 60, "viewer_grace": 1.0}
    )
    with structlog.testing.capture_logs() as logs, anyio.fail_after(WAIT):
        async with (
            sup,
            record_events(sup, "idle") as idle,
            record_events(sup, "viewed") as viewed,
            contextlib.AsyncExitStack() as stack,
        ):
            await sup.start("idle")
            await sup.start("stopped")
            # A viewer keeps "drained" from idling out, so the drain is what stops it.
            await stack.enter_async_context(sup.viewing("drained"))
            async with sup.viewing("viewed"):
                await sup.start("viewed")
            await sup.stop("stopped")
            clock.advance(1.0)
            await viewed.wait_for(lambda e: isinstance(e, Shutdown))
            clock.advance(60)
            await idle.wait_for(lambda e: isinstance(e, Shutdown))
            await sup.start("drained")

    reasons = {e["conversation_id"]: e["reason"] for e in lines(logs, "session_shutdown")}
    assert reasons == {
        "idle": "inactivity",
        "viewed": "no_viewers",
        "stopped": "stopped",
        "drained": "drain",
    }
    (draining,) = lines(logs, "supervisor_draining")
    (drained,) = lines(logs, "supervisor_drained")
    assert logs.index(draining) < logs.index(drained)
    assert logs.index(draining) < logs.index(lines(logs, "session_shutdown")[-1])
    assert_every_session_line_names_it(logs)


@pytest.mark.anyio
async def test_every_runtime_line_about_a_session_has_conversation_id_and_agent_id(
    anyio_backend: str,
) -> None:
    """A busy life: turns, a failed turn, cancel, restarts, store outage, takeover, corrupt row."""
    clock = ManualClock()
    cues = Cues()
    memory = MemoryStore()
    store = FlakyStore(memory, clock=clock)
    sup, _, _ = counted_supervisor(
        CountingFactory(lambda: SharedCueAgent(cues)),
        store=store,
        clock=clock,
        on_corrupt="quarantine",
        supervisor_opts={"inactivity_timeout": 60, "save_retry_backoff": 1.0},
    )
    # a row nobody can read, for the quarantine line
    await memory.save(
        "broken",
        StoredConversation(state={"messages": "not a list"}),
        expected_version=None,
        lifecycle="completion",
    )
    with structlog.testing.capture_logs() as logs, anyio.fail_after(WAIT):
        async with sup:
            await sup.send("a", "hello")
            await wait_for_status(sup, "a", Status.IDLE)
            await sup.send("a", "crash")  # a failed turn (no restart_on_error)
            await saved_as(memory, "a", "error")
            await sup.send("a", "slow")
            await cues.started_slow.wait()
            await sup.cancel("a")
            await saved_as(memory, "a", "cancel")

            store.fail_saves = 2  # a store outage, then recovery
            with pytest.raises(StoreUnavailable):  # not stored, so not acknowledged
                await sup.send("b", "hello")
            await wait_for_status(sup, "b", Status.IDLE)
            clock.advance(1.0)
            clock.advance(2.0)
            await wait_until(lambda: any(e["event"] == "store_save_recovered" for e in logs))

            # another writer takes "b" over
            record = await memory.load("b")
            assert record is not None
            await memory.save(
                "b",
                attrs.evolve(record, state=dump_state(await stored_state(memory, "b"))),
                expected_version=record.version,
                lifecycle="completion",
            )
            handle = sup.get("b")
            assert handle is not None
            with pytest.raises(Exception, match="another writer"):
                await handle.send("mine?")

            await sup.start("broken")  # quarantined, then a fresh start
            clock.advance(60)  # everything idle times out
            await wait_until(lambda: len(lines(logs, "session_shutdown")) >= 3)

    seen = {e["event"] for e in logs}
    assert {
        "session_started",
        "turn_failed",
        "turn_cancelled",
        "store_save_failed",
        "store_save_recovered",
        "session_superseded",
        "corrupt_state_quarantined",
        "session_shutdown",
    } <= seen
    assert_every_session_line_names_it(logs)
