from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import anyio
import anyio.lowlevel

from ..agents import Done, Interrupt, Outcome, Pause, Turn
from ..state import Message, PendingInterrupt, State

__all__ = ["ScriptedAgent"]


def _pending_text(state: State) -> str:
    """The text of the user messages since the last assistant message."""
    texts: list[str] = []
    for message in reversed(state.messages):
        if message.role == "assistant":
            break
        if message.role == "user":
            texts.append(message.text())
    return "\n".join(reversed(texts))


class ScriptedAgent:
    """An agent whose behaviour is cued by words in the user's message.

    ``crash`` raises ``RuntimeError``; ``interrupt`` asks a question; ``notice``
    raises an acknowledge-only interrupt; ``pause`` pauses; ``slow`` waits until
    ``release()`` (or cancellation); anything else is answered with
    ``reply(text)`` (default ``"echo: <text>"``), streamed word by word when
    ``stream=True``. ``turns`` records the text each turn saw.
    """

    def __init__(
        self,
        reply: Callable[[str], str] | None = None,
        *,
        stream: bool = False,
        crash_on: Iterable[str] = ("crash",),
        interrupt_on: Iterable[str] = ("interrupt",),
        notice_on: Iterable[str] = ("notice",),
        pause_on: Iterable[str] = ("pause",),
        slow_on: Iterable[str] = ("slow",),
        crash_on_start: int = 0,
    ) -> None:
        self._reply = reply or (lambda text: f"echo: {text}")
        self.stream = stream
        self.crash_on = tuple(crash_on)
        self.interrupt_on = tuple(interrupt_on)
        self.notice_on = tuple(notice_on)
        self.pause_on = tuple(pause_on)
        self.slow_on = tuple(slow_on)
        self.crash_on_start = crash_on_start
        self.turns: list[str] = []
        self.answers: list[Any] = []
        self.starts = 0
        self.abandoned: list[PendingInterrupt] = []
        self._gate = anyio.Event()
        self.started_slow = anyio.Event()

    def release(self) -> None:
        """Let the slow turns that are waiting (and later ones) finish."""
        self._gate.set()

    def hold(self) -> None:
        """Make later slow turns wait again."""
        self._gate = anyio.Event()
        self.started_slow = anyio.Event()

    async def on_start(self, state: State) -> State:
        self.starts += 1
        if self.crash_on_start > 0:
            self.crash_on_start -= 1
            raise RuntimeError("on_start crashed on cue")
        return state

    async def run(self, turn: Turn) -> Outcome:
        text = _pending_text(turn.state)
        self.turns.append(text)
        words = set(text.lower().split())
        if words & set(self.crash_on):
            raise RuntimeError(f"crashed on cue: {text!r}")
        if words & set(self.slow_on):
            self.started_slow.set()
            await self._gate.wait()
        if words & set(self.interrupt_on):
            return Interrupt(turn.state, {"question": f"approve {text!r}?"})
        if words & set(self.notice_on):
            return Interrupt(turn.state, {"notice": text}, kind="notice")
        if words & set(self.pause_on):
            return Pause(turn.state, reason="paused on cue")
        reply = self._reply(text)
        if self.stream:
            for i, word in enumerate(reply.split(" ")):
                turn.delta(word if i == 0 else " " + word)
                await anyio.lowlevel.checkpoint()
            return Done(turn.state)
        return Done(turn.state, reply=reply)

    async def resume(self, turn: Turn, answer: Any) -> Outcome:
        self.answers.append(answer)
        turn.state.messages.append(
            Message(role="tool", content=f"answer: {answer}", metadata={"resume": True})
        )
        return Done(turn.state, reply=f"resumed with {answer}")

    def abandon(self, state: State, interrupt: PendingInterrupt) -> State:
        self.abandoned.append(interrupt)
        state.metadata.setdefault("abandoned_interrupts", []).append(
            interrupt.model_dump(mode="json")
        )
        return state
