"""The ``Agent`` protocol, the ``Turn`` an agent runs, and its outcomes."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import anyio.to_thread
import attrs

from ..state import Content, State, Usage

if TYPE_CHECKING:
    from datetime import datetime

    from ..state import TimerInfo

__all__ = [
    "MAX_STEP_NAME",
    "Agent",
    "Done",
    "Interrupt",
    "Outcome",
    "Pause",
    "StepCall",
    "Turn",
    "TurnSink",
    "check_step_name",
]


@attrs.frozen
class Done:
    """The turn finished. ``reply`` (if given) is appended as the assistant's message.

    Without ``reply``, text streamed with ``turn.delta`` becomes the reply.
    """

    state: State
    reply: Content | None = None


@attrs.frozen
class Interrupt:
    """The agent needs an answer (``kind="question"``) or an acknowledgement (``"notice"``)."""

    state: State
    data: Any = None
    kind: Literal["question", "notice"] = "question"
    reply: Content | None = None


@attrs.frozen
class Pause:
    """The agent stopped on purpose; the next message resumes the conversation."""

    state: State
    reason: str = ""
    reply: Content | None = None


Outcome = Done | Interrupt | Pause


class TurnSink(Protocol):
    """What a turn reports to; implemented by the runtime."""

    def _turn_delta(self, text: str) -> None: ...
    def _turn_emit(self, name: str, data: Any) -> None: ...
    def _turn_queue(self, content: Content) -> None: ...
    async def _turn_schedule(self, payload: Any, *, delay: Any, at: Any, key: Any) -> TimerInfo: ...
    async def _turn_step(self, turn: Turn, step: StepCall) -> Any: ...


#: The longest step name ``turn.step`` accepts.
MAX_STEP_NAME = 200


@attrs.frozen
class StepCall:
    """One call of ``turn.step``, as the runtime receives it.

    ``usage`` (set by the model adapters, not by ``turn.step``) reads what a
    model-response step cost from its result.
    """

    name: str
    call: Callable[[], Any]
    idempotent: bool
    returns: Any = None
    usage: Callable[[Any], Usage | None] | None = None

    async def run(self) -> Any:
        """Call the function: a coroutine function is awaited, anything else runs
        on a worker thread (so a blocking call never stalls the event loop)."""
        target = self.call
        if _is_async(target):
            return await target()
        result = await anyio.to_thread.run_sync(target)
        if inspect.isawaitable(result):
            return await result
        return result


def check_step_name(name: Any) -> str:
    """Return ``name`` if it can name a step; raise TypeError/ValueError otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"a step name must be a str, got {type(name).__name__}")
    if not name or len(name) > MAX_STEP_NAME:
        raise ValueError(
            f"a step name must be 1 to {MAX_STEP_NAME} characters long, got {len(name)}"
        )
    return name


def _is_async(target: Callable[[], Any]) -> bool:
    func: Any = target
    while isinstance(func, partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - an object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _declared_return(fn: Any) -> Any:
    """The return annotation of ``fn`` when it names a class (a pydantic model), else None."""
    func: Any = fn
    while isinstance(func, partial):
        func = func.func
    func = getattr(func, "__func__", func)  # a bound method: its function
    try:
        return _return_class(func)
    except TypeError:  # not hashable: look it up each time
        return _return_class.__wrapped__(func)


@lru_cache(maxsize=1024)
def _return_class(func: Any) -> Any:
    # Evaluating annotations is slow (tens of µs): once per function, not per step.
    try:
        hints = inspect.get_annotations(func, eval_str=True)
    except Exception:  # an annotation that does not resolve, or not a function
        return None
    declared = hints.get("return")
    return declared if isinstance(declared, type) else None


class Turn:
    """One run of an agent over a conversation.

    Attributes:
        state: the agent's working copy of the conversation's State. Append to
            ``state.messages`` or build a new State; return it in the outcome.
        agent_id, conversation_id: who and what this turn is for.
        scope: the trusted scope of the request that woke the session (may be None).
        extra: the factory's ``SessionOpts.extra``, never inspected by the runtime.
    """

    __slots__ = ("_sink", "_text", "agent_id", "conversation_id", "extra", "scope", "state")

    def __init__(
        self,
        *,
        state: State,
        agent_id: str,
        conversation_id: str,
        scope: Any = None,
        extra: Mapping[str, Any] | None = None,
        sink: TurnSink | None = None,
    ) -> None:
        self.state = state
        self.agent_id = agent_id
        self.conversation_id = conversation_id
        self.scope = scope
        self.extra: Mapping[str, Any] = extra if extra is not None else {}
        self._sink = sink
        self._text: list[str] = []

    def delta(self, text: str) -> None:
        """Stream a piece of the reply; subscribers get it as a ``Delta`` event."""
        if not isinstance(text, str):
            raise TypeError(f"delta text must be a str, got {type(text).__name__}")
        self._text.append(text)
        if self._sink is not None:
            self._sink._turn_delta(text)

    def emit(self, name: str, data: Any = None) -> None:
        """Publish a custom ``AgentEvent(name, data)`` to subscribers."""
        if not isinstance(name, str) or not name:
            raise ValueError("event name must be a non-empty str")
        if self._sink is not None:
            self._sink._turn_emit(name, data)

    def queue_message(self, content: Content) -> None:
        """Queue a follow-up user message (e.g. from a tool); it runs as the next turn."""
        if self._sink is None:
            raise RuntimeError("this turn is not attached to a session")
        self._sink._turn_queue(content)

    async def schedule(
        self,
        payload: Any = None,
        *,
        delay: float | None = None,
        at: datetime | None = None,
        key: str | None = None,
    ) -> TimerInfo:
        """Schedule a durable timer for this conversation ("remind me in two hours").

        At its due time the agent's ``on_timer(turn, payload)`` runs as a turn of its
        own (see ``SessionSupervisor.schedule`` for the arguments and the errors). The
        timer is stored when this returns: a turn that then fails or is cancelled
        does not take it back (cancel it with ``SessionSupervisor.cancel_timer``).
        """
        if self._sink is None:
            raise RuntimeError("this turn is not attached to a session")
        return await self._sink._turn_schedule(payload, delay=delay, at=at, key=key)

    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        idempotent: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` as a durable step of this turn and return its result.

        The result (JSON-ready, or a pydantic model) is stored before this returns.
        When a cut turn (a crash, a failover, a stop) runs again, a step that
        completed returns its stored result without calling ``fn`` (a pydantic
        model comes back as the model class ``fn``'s return annotation names,
        any other result as its JSON form); a step that started but stored no
        result is called again when ``idempotent``, and raises
        ``StepOutcomeUnknown`` otherwise. ``fn`` may be async; a plain function
        runs on a worker thread. On a Turn without a session ``fn`` just runs.

        Raises:
            TypeError, ValueError: ``name`` is not a str of 1 to 200 characters
                (before anything runs).
            StepMismatch: the cut run stored another step at this index.
            StepOutcomeUnknown: see above.
            StepResultError: the result is not JSON-ready or is over ``max_step_bytes``.
            StoreUnavailable: the step ran but its result could not be stored.
            InvalidStatus: the turn has ended.
        """
        check_step_name(name)
        if not callable(fn):
            raise TypeError(f"step {name!r}: fn must be callable, got {type(fn).__name__}")
        step = StepCall(
            name=name,
            call=partial(fn, *args, **kwargs),
            idempotent=bool(idempotent),
            returns=_declared_return(fn),
        )
        return await self._durable_step(step)

    async def _durable_step(self, step: StepCall) -> Any:
        """Run ``step`` through the session's journal (the adapters call this)."""
        if self._sink is None:
            return await step.run()
        return await self._sink._turn_step(self, step)

    @property
    def streamed_text(self) -> str:
        """The text streamed with ``delta`` so far."""
        return "".join(self._text)


@runtime_checkable
class Agent(Protocol):
    """An agent runs turns. Optional hooks, found by name when present:

    - ``async resume(turn, answer) -> Outcome``: continue after an interrupt.
    - ``async on_start(state) -> State``: called when the actor starts or restarts.
    - ``restorable(interrupt) -> bool``: can this interrupt be answered after a restart?
    - ``abandon(state, interrupt) -> State``: record an interrupt the user talked past.
    - ``async on_timer(turn, payload) -> Outcome``: a durable timer fired
      (``turn.schedule``); without it the payload reaches ``run`` as a user message.

    Raising from ``run`` is a failed turn; cancellation is anyio cancellation.
    """

    async def run(self, turn: Turn) -> Outcome: ...
