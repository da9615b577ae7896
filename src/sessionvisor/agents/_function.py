"""``FunctionAgent``: an agent made of plain functions."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import anyio.to_thread

from ..state import PendingInterrupt, State
from ._agent import Done, Interrupt, Outcome, Pause, Turn

__all__ = ["FunctionAgent", "to_outcome"]


def to_outcome(result: Any, turn: Turn) -> Outcome:
    """Normalise what an agent function returned into an outcome.

    An outcome is kept; a ``str`` or a list of parts is the reply; None means
    "done, reply with whatever was streamed".

    Raises:
        TypeError: the result is none of those.
    """
    if isinstance(result, Done | Interrupt | Pause):
        return result
    if result is None:
        return Done(turn.state)
    if isinstance(result, str | list):
        return Done(turn.state, reply=result)
    raise TypeError(
        f"agent function returned {result!r}; expected Done/Interrupt/Pause, "
        "a str or list of parts (the reply), or None"
    )


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async __call__ objects
    ):
        return await fn(*args)
    # A sync function may block: keep it off the event loop.
    result = await anyio.to_thread.run_sync(functools.partial(fn, *args))
    if inspect.isawaitable(result):
        return await result
    return result


class FunctionAgent:
    """Wrap ``fn(turn)`` (async, or sync run on a worker thread) as an ``Agent``.

    ``fn`` returns an outcome, the reply (``str`` or parts), or None. The
    optional hooks have the meaning given in the ``Agent`` protocol.
    """

    def __init__(
        self,
        fn: Callable[[Turn], Any],
        *,
        resume: Callable[[Turn, Any], Any] | None = None,
        on_start: Callable[[State], Any] | None = None,
        restorable: Callable[[PendingInterrupt], bool] | None = None,
        abandon: Callable[[State, PendingInterrupt], State] | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"FunctionAgent needs a callable, got {fn!r}")
        self._fn = fn
        self._resume = resume
        self._on_start = on_start
        self._restorable = restorable
        self._abandon = abandon
        self.name = name or getattr(fn, "__name__", "function_agent")

    def __repr__(self) -> str:
        return f"FunctionAgent({self.name})"

    async def run(self, turn: Turn) -> Outcome:
        return to_outcome(await _call(self._fn, turn), turn)

    async def resume(self, turn: Turn, answer: Any) -> Outcome:
        if self._resume is None:
            # Without a resume hook the answer is handed to the agent as a user message.
            turn.state.messages.append(_answer_message(answer))
            return to_outcome(await _call(self._fn, turn), turn)
        return to_outcome(await _call(self._resume, turn, answer), turn)

    async def on_start(self, state: State) -> State:
        if self._on_start is None:
            return state
        result = await _call(self._on_start, state)
        return state if result is None else result

    def restorable(self, interrupt: PendingInterrupt) -> bool:
        return True if self._restorable is None else bool(self._restorable(interrupt))

    def abandon(self, state: State, interrupt: PendingInterrupt) -> State:
        if self._abandon is None:
            state.metadata.setdefault("abandoned_interrupts", []).append(
                interrupt.model_dump(mode="json")
            )
            return state
        return self._abandon(state, interrupt)


def _answer_message(answer: Any) -> Any:
    from ..state import Message

    content = answer if isinstance(answer, str) else str(answer)
    return Message(role="user", content=content, metadata={"resume_answer": True})
