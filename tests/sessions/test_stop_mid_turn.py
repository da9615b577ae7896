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
from sessionvisor.testing import wait_for_status, wait_until

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


async def test_a_resume_that_a_stop_cut_short_leaves_the_interrupt_to_answer_again(
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

            stored = await sup.load("c")
            assert stored is not None and stored.interrupt is not None
            assert stored.interrupt.data == {"question": "go?"}

            script.stopped_once = True
            await sup.resume("c", "yes")  # wakes it carrying the answer
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
