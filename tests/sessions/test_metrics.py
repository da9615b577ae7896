"""What an operator reads from ``SessionSupervisor.metrics()`` moves as conversations run."""

from __future__ import annotations

import anyio
import pytest

from sessionvisor import SessionSupervisor, SingleRouter, Status
from sessionvisor.testing import ManualClock, ScriptedAgent, wait_for_status, wait_until

pytestmark = pytest.mark.anyio


async def test_counts_follow_a_scripted_conversation(anyio_backend: str) -> None:
    agent = ScriptedAgent()
    opts = {"restart_on_error": True, "max_restarts": 5}
    async with SessionSupervisor(SingleRouter(lambda a, c: agent), supervisor_opts=opts) as sup:
        before = sup.metrics()
        assert (before.live_sessions, before.turns_started, before.save_seconds.count) == (0, 0, 0)

        await sup.send("c-1", "hello")
        await wait_for_status(sup, "c-1", Status.IDLE)
        await sup.send("c-1", "interrupt me")
        await wait_for_status(sup, "c-1", Status.INTERRUPTED)
        await sup.send("c-1", "crash now")
        await wait_until(lambda: sup.metrics().restarts == 1)
        await wait_for_status(sup, "c-1", Status.IDLE)
        await sup.send("c-2", "slow")
        with anyio.fail_after(5):
            await agent.started_slow.wait()
        await sup.send("c-2", "queued behind")

        during = sup.metrics()
        assert during.live_sessions == 2
        assert during.running_sessions == 1
        assert during.queued_messages == 1
        assert during.sessions_started == 2
        assert during.turns_started == 4
        assert during.turns_ended == {"completed": 1, "interrupted": 1, "failed": 1}
        assert during.restarts == 1 and during.give_ups == 0
        assert during.events_published > 10
        # A save at each turn's start and end, at least: latency recorded for each.
        assert during.save_seconds.count >= 7
        assert during.save_seconds.buckets[-1] == (float("inf"), during.save_seconds.count)
        assert during.turn_seconds.count == 3

        agent.release()
        await wait_for_status(sup, "c-2", Status.IDLE)
        assert await sup.stop("c-2") == "stopped"
        after = sup.metrics()
        assert after.live_sessions == 1 and after.running_sessions == 0
        assert after.queued_messages == 0
        assert after.turns_ended["completed"] == 3
        assert after.sessions_stopped == {"stopped": 1}


async def test_parked_sessions_and_slow_subscribers_are_counted(anyio_backend: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent()
    opts = {"hibernate_after": 1.0, "inactivity_timeout": None, "subscriber_buffer": 1}
    router = SingleRouter(lambda a, c: agent)
    async with SessionSupervisor(router, clock=clock, supervisor_opts=opts) as sup:
        await sup.send("c-1", "hello")
        await wait_for_status(sup, "c-1", Status.IDLE)
        clock.advance(2.0)
        await wait_until(lambda: sup.metrics().parked_sessions == 1)

        async with sup.subscribe("c-1"):  # never read: it overflows on the next events
            await sup.send("c-1", "again")
            await wait_until(lambda: sup.metrics().subscribers_dropped == 1)
        assert sup.metrics().events_dropped == 1


async def test_list_running_reports_each_queue_length(anyio_backend: str) -> None:
    agent = ScriptedAgent()
    async with SessionSupervisor(SingleRouter(lambda a, c: agent)) as sup:
        await sup.send("c-1", "slow")
        with anyio.fail_after(5):
            await agent.started_slow.wait()
        await sup.send("c-1", "one")
        await sup.send("c-1", "two")
        (summary,) = await sup.list_running()
        assert (summary.conversation_id, summary.queued) == ("c-1", 2)
        agent.release()
        await wait_for_status(sup, "c-1", Status.IDLE)
        (summary,) = await sup.list_running()
        assert summary.queued == 0
