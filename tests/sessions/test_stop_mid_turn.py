"""A stop (or drain) that cuts a turn short hands its work back for the next wake."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from sessionvisor import (
    Done,
    FunctionAgent,
    Interrupt,
    SessionSupervisor,
    SingleRouter,
    Status,
    Turn,
)
from sessionvisor.testing import wait_for_status, wait_until, wait_until_settled

pytestmark = pytest.mark.anyio


class Script:
    """Turn "a" waits for a gate; "b" and resumes hang until the session was stopped once."""

    def __init__(self) -> None:
        self.gate_a = anyio.Event()
        self.started_a = anyio.Event()
        self.started_b = anyio.Event()
        self.started_resume = anyio.Event()
        self.stopped_once = False
        self.answers: list[Any] = []

    async def run(self, turn: Turn) -> Any:
        text = turn.state.messages[-1].text()
        if text == "a":
            self.started_a.set()
            await self.gate_a.wait()
        if text == "b" and not self.stopped_once:
            self.started_b.set()
            await anyio.sleep_forever()
        if text == "ask":
            return Interrupt(turn.state, {"question": "go?"})
        return Done(turn.state, reply=f"re: {text}")

    async def resume(self, turn: Turn, answer: Any) -> Any:
        if not self.stopped_once:
            self.started_resume.set()
            await anyio.sleep_forever()
        self.answers.append(answer)
        return Done(turn.state, reply=f"resumed: {answer}")

    def router(self) -> SingleRouter:
        return SingleRouter(lambda agent_id, config: FunctionAgent(self.run, resume=self.resume))


def texts(messages: Any) -> list[str]:
    return [m.text() for m in messages]


async def test_a_queued_message_whose_turn_a_stop_cut_short_is_answered_after_the_wake(
    anyio_backend: str,
) -> None:
    script = Script()
    async with SessionSupervisor(script.router()) as sup:
        with anyio.fail_after(5):
            await sup.send("c", "a")
            await script.started_a.wait()
            assert (await sup.send("c", "b")).queued
            script.gate_a.set()
            await script.started_b.wait()  # "b" now runs as its own turn

            assert await sup.stop("c") == "stopped"

            stored = await sup.load("c")
            assert stored is not None
            assert texts(stored.messages) == ["a", "re: a"]
            assert texts(stored.queued) == ["b"]  # handed back, not left unanswered

            script.stopped_once = True
            info = await sup.start("c")
            assert info.started
            await wait_for_status(sup, "c", Status.IDLE)
            await wait_until(lambda: texts(info.handle.snapshot().messages)[-1:] == ["re: b"])
        assert texts(info.handle.snapshot().messages) == ["a", "re: a", "b", "re: b"]


async def test_a_resume_that_a_stop_cut_short_is_carried_out_on_the_next_start(
    anyio_backend: str,
) -> None:
    script = Script()
    async with SessionSupervisor(script.router()) as sup:
        with anyio.fail_after(5):
            await sup.send("c", "ask")
            await wait_for_status(sup, "c", Status.INTERRUPTED)
            await sup.resume("c", "yes")
            await script.started_resume.wait()

            assert await sup.stop("c") == "stopped"

            # The question is kept with its acknowledged answer: a later answer is
            # too late, and the next start carries the first one out.
            stored = await sup.load("c")
            assert stored is not None and stored.interrupt is not None
            assert stored.interrupt.data == {"question": "go?"}
            assert stored.interrupt.answered and stored.interrupt.answer == "yes"

            script.stopped_once = True
            await sup.start("c")
            await wait_for_status(sup, "c", Status.IDLE)
        assert script.answers == ["yes"]


async def test_a_restorable_hook_that_raises_does_not_break_the_stop_or_the_supervisor(
    anyio_backend: str,
) -> None:
    class Brittle:
        async def run(self, turn: Turn) -> Any:
            text = turn.state.messages[-1].text()
            if text == "ask":
                return Interrupt(turn.state, {"question": "go?"})
            return Done(turn.state, reply=f"re: {text}")

        def restorable(self, interrupt: Any) -> bool:
            raise RuntimeError("hook broke")

    async with SessionSupervisor(SingleRouter(lambda a, c: Brittle())) as sup:
        with anyio.fail_after(5):
            await sup.send("c", "ask")
            await wait_for_status(sup, "c", Status.INTERRUPTED)
            async with sup.subscribe("c") as events:
                assert await sup.stop("c") == "stopped"
                async for event in events:
                    if event.event_type == "Shutdown":
                        assert event.interrupt_restorable is False  # type: ignore[attr-defined]
                        break
            # The supervisor still serves: another conversation, and this one again.
            await sup.send("other", "hi")
            await wait_for_status(sup, "other", Status.IDLE)
            assert (await sup.start("c")).handle.status is Status.INTERRUPTED


class _GatedStore:
    """A memory store whose ``turn_start`` saves wait until the test opens the gate."""

    def __init__(self) -> None:
        from sessionvisor import MemoryStore

        self.inner = MemoryStore()
        self.gate = anyio.Event()
        self.waiting = anyio.Event()

    async def save(self, conversation_id: str, record: Any, **kwargs: Any) -> int:
        if kwargs.get("lifecycle") == "turn_start" and not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        return await self.inner.save(conversation_id, record, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.anyio
async def test_a_stop_that_wins_over_a_turn_about_to_run_hands_its_message_back(
    anyio_backend: str,
) -> None:
    # The send took the message into the history and is saving the turn's start when
    # the stop arrives: the turn never runs, and the message must wait for the next wake
    # instead of staying in the history unanswered.
    from sessionvisor import SessionSupervisor, SingleRouter
    from sessionvisor.testing import ScriptedAgent

    agent = ScriptedAgent()
    store = _GatedStore()
    async with SessionSupervisor(SingleRouter(lambda a, c: agent), store=store) as sup:
        await sup.start("c-1")
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sup.send, "c-1", "hello")
                await store.waiting.wait()
                tg.start_soon(sup.stop, "c-1")
                await anyio.wait_all_tasks_blocked()
                store.gate.set()
        record = await store.inner.load("c-1")
        assert record is not None
        assert [m["content"] for m in record.state["queued"]] == ["hello"]
        assert record.state["messages"] == []
        assert record.lifecycle == "queued"
        assert agent.turns == []
        await sup.start("c-1")  # the next wake answers it
        with anyio.fail_after(10):
            await wait_until_settled(sup, "c-1")
        assert agent.turns == ["hello"]
