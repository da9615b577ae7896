"""Running one turn: calling the agent, adopting its outcome, rolling back a failure.

A turn works on the session's State in place. The user's messages (taken from
the queue before the turn) stay whatever happens; what the agent added is rolled
back when the turn fails or is cancelled, without copying the history (messages
are frozen, so cutting the list back is enough). A turn cut short by a stop,
unlike a user's cancel, hands its work back: its messages return to the front of
the queue and an answered interrupt is pending again, so the next wake does it.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from .._telemetry import span
from ..agents import Done, Interrupt, Pause, Turn
from ..state import Content, Message, PendingInterrupt, State
from ._events import MessageAppended, Status

if TYPE_CHECKING:
    from ._actor import Actor

__all__: list[str] = ["Crash", "TurnControl", "adopt", "display", "run_turn"]

NO_ANSWER: Any = object()


class Crash(Exception):
    """Raised inside the worker to restart the actor by policy."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


class TurnControl:
    """The running turn's controls: its cancel scope, a pending resume, who waits for it."""

    __slots__ = ("active", "cancel_requested", "next_context", "resume", "scope", "waiter")

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None
        self.active = False  # a turn was begun and has not ended yet
        self.cancel_requested = False
        self.resume: tuple[Any, PendingInterrupt] | None = None  # (answer, interrupt)
        self.waiter: anyio.Event | None = None  # made only when someone waits
        # The trace context of the request that caused the next turn (None: untraced).
        self.next_context: Any = None

    def cancel(self) -> None:
        self.cancel_requested = True
        if self.scope is not None:
            self.scope.cancel()

    async def wait_done(self) -> None:
        done = self.waiter
        if done is None:
            done = self.waiter = anyio.Event()
        await done.wait()

    def release_waiters(self) -> None:
        done = self.waiter
        if done is not None:
            self.waiter = None
            done.set()


async def run_turn(actor: Actor, *, resume: bool = False) -> None:
    """Run one turn of ``actor`` and save its outcome, in a ``sessionvisor.turn`` span.

    Raises:
        Crash: the turn failed and the options ask for a restart.
    """
    parent, actor.turn.next_context = actor.turn.next_context, None
    stats = actor.host.stats
    stats.turns_started += 1
    began = time.perf_counter()
    ended = "failed"
    try:
        with span(
            "sessionvisor.turn",
            actor.conversation_id,
            actor.agent_id,
            parent=parent,
            resume=resume or None,
        ):
            ended = await _run_turn(actor, resume)
    finally:
        stats.turns_ended[ended] += 1
        stats.turn_seconds.observe(time.perf_counter() - began)


async def _run_turn(actor: Actor, resume: bool) -> str:
    """Run the turn; return how it ended (for the figures)."""
    control = actor.turn
    state = actor.state
    history = state.messages
    mark = len(history)
    metadata = copy.deepcopy(state.metadata) if state.metadata else {}
    answer: Any = NO_ANSWER
    answered: PendingInterrupt | None = None
    taken = 0 if resume else actor.queue.taken  # user messages this turn took from the queue
    if resume:
        assert control.resume is not None
        answer, answered = control.resume
    turn = Turn(
        state=state,
        agent_id=actor.agent_id,
        conversation_id=actor.conversation_id,
        scope=actor.scope,
        extra=actor.extra,
        sink=actor,
    )
    outcome: Any = None
    error: Exception | None = None
    with anyio.CancelScope() as scope:
        control.scope = scope
        if control.cancel_requested:
            scope.cancel()
        try:
            if answer is NO_ANSWER:
                outcome = await actor.agent.run(turn)
            else:
                outcome = await _call_resume(actor.agent, turn, answer)
            if not isinstance(outcome, Done | Interrupt | Pause):
                raise TypeError(
                    f"agent {actor.agent!r} returned {outcome!r}; expected Done, Interrupt or Pause"
                )
        except Exception as exc:
            error = exc
    control.scope = None
    control.resume = None
    cancelled = scope.cancel_called
    control.cancel_requested = False
    try:
        if cancelled or error is not None:
            return await _roll_back(actor, state, history, mark, metadata, taken, answered, error)
        _finish_outcome(actor, outcome, turn, history, mark)
        if isinstance(outcome, Interrupt):
            await actor.persist("interrupt")
            return "interrupted"
        if isinstance(outcome, Pause):
            await actor.persist("pause")
            return "paused"
        await actor.persist("completion", shield=False)
        return "completed"
    finally:
        control.active = False
        control.release_waiters()


async def _roll_back(
    actor: Actor,
    state: State,
    history: list[Message],
    mark: int,
    metadata: dict[str, Any],
    taken: int,
    answered: PendingInterrupt | None,
    error: Exception | None,
) -> str:
    stop_reason = actor.life.reason
    # A turn cut short by a stop does not hold the queue: those messages were never
    # refused by the user, so the next wake answers them.
    actor.queue.held = stop_reason is None or error is not None
    # Roll back what the agent did; the user's messages (before the mark) stay.
    del history[mark:]
    state.messages = history
    state.metadata = metadata
    actor.state = state
    actor.writer.changed()
    if error is None and stop_reason is not None:
        # Stopped (or drained) mid-turn, not cancelled by the user: hand the work back.
        if answered is not None:
            state.interrupt = answered
            actor.set_status(Status.INTERRUPTED)
        else:
            actor.queue.give_back(state, history, mark, taken)
            actor.set_status(Status.CANCELLED)
        actor.log().info("turn_cancelled", by=str(stop_reason))
        return "handed_back"
    if error is None:
        actor.set_status(Status.CANCELLED)
        await actor.persist("cancel")
        actor.log().info("turn_cancelled")
        return "cancelled"
    actor.log().warning("turn_failed", error=describe(error))
    actor.set_status(Status.ERROR, error=describe(error))
    await actor.persist("error")
    if actor.opts.restart_on_error:
        raise Crash(error)
    return "failed"


async def _call_resume(agent: Any, turn: Turn, answer: Any) -> Any:
    hook: Callable[[Turn, Any], Awaitable[Any]] | None = getattr(agent, "resume", None)
    if hook is None:
        # Without a resume hook the answer reaches the agent as a user message.
        turn.state.messages.append(
            Message(role="user", content=_as_content(answer), metadata={"resume": True})
        )
        return await agent.run(turn)
    return await hook(turn, answer)


def _finish_outcome(
    actor: Actor, outcome: Any, turn: Turn, history: list[Message], mark: int
) -> None:
    old = actor.state
    new = adopt(outcome.state, old)
    actor.state = new
    added = _added_messages(new.messages, history, mark)
    reply = outcome.reply
    if reply is None and isinstance(outcome, Done):
        streamed = turn.streamed_text
        if streamed and not any(m.role == "assistant" for m in added):
            reply = streamed
    if reply is not None:
        message = Message(role="assistant", content=reply)  # agent output: validated
        new.messages.append(message)
        added.append(message)
    for message in added:
        actor.emit(MessageAppended, message=display(message))
    actor.writer.changed()
    if isinstance(outcome, Interrupt):
        new.interrupt = PendingInterrupt(kind=outcome.kind, data=outcome.data)
        actor.queue.held = True
        actor.set_status(Status.INTERRUPTED)
    elif isinstance(outcome, Pause):
        actor.queue.held = True
        actor.set_status(Status.PAUSED)
        if outcome.reason:
            from ._events import AgentEvent

            actor.emit(AgentEvent, name="paused", data={"reason": outcome.reason})
    # A Done turn stays `running`: the worker announces `idle` only when it has
    # nothing left, so queued messages run next with no idle in between.


def adopt(new: State, old: State) -> State:
    """The runtime owns the queue and the interrupt; an agent's new State inherits them."""
    if new is not old:
        if not isinstance(new, State):
            raise TypeError(f"an outcome must carry a State, got {new!r}")
        new.queued = old.queued
        new.interrupt = old.interrupt
    return new


def _added_messages(messages: list[Message], history: list[Message], mark: int) -> list[Message]:
    if messages is history or (
        len(messages) >= mark and (mark == 0 or messages[mark - 1] is history[mark - 1])
    ):
        return list(messages[mark:])
    known = {m.id for m in history[:mark]}
    return [m for m in messages if m.id not in known]


def display(message: Message) -> Message:
    """The copy of a user message that people see (a preprocessor's display copy)."""
    shown = message.metadata.get("display")
    if shown is None:
        return message
    return Message.model_validate(shown)


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _as_content(answer: Any) -> Content:
    if isinstance(answer, str):
        return answer
    return json.dumps(answer, default=str)
