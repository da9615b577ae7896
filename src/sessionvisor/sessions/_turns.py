"""The worker, and running one turn: calling the agent, adopting its outcome,
rolling back a failure.

The worker (``work``) exists only while a session has work that awaits: it
runs the begun turn, a resume, the queue, a restart or the final stop, then
hands the actor back (``Actor.release_worker``). A turn works on the session's
State in place. The user's messages (taken from the queue before the turn)
stay whatever happens; what the agent added is rolled back when the turn fails
or is cancelled, without copying the history (messages are frozen, so cutting
the list back is enough). A turn cut short by a stop, unlike a user's cancel,
hands its work back: its messages return to the front of the queue and an
answered interrupt is pending again, so the next wake does it.

Everything here changes the session through the actor's transitions
(``begin_turn``, ``announce_added``, ``roll_back``, ``hand_back_turn``, ...).
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
from ..state._models import new_interrupt
from ._events import AgentEvent, Status, describe
from ._quotas import take_turn_slot
from ._restarts import restart_by_policy
from ._steps import journal_name, retire_journal
from ._stopping import StopReason, finish_stop, idle_stop
from ._superseding import agent_view, rejoin
from ._timer_turns import run_agent

if TYPE_CHECKING:
    from ._actor import Actor

__all__: list[str] = ["Crash", "TurnControl", "adopt", "display", "run_turn", "work"]

NO_ANSWER: Any = object()


class Crash(Exception):
    """Raised inside the worker to restart the actor by policy."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


class TurnControl:
    """The running turn's controls: its cancel scope, a pending resume, who waits for it.

    Read its fields; they change only through its methods, called by the actor's
    transitions (``Conversation.enter_turn``, ``end_turn``, ...).
    """

    __slots__ = (
        "active",
        "cancel_requested",
        "current",
        "journal_name",
        "next_step",
        "resume",
        "scope",
        "started_with",
        "taken",
        "waiter",
    )

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None
        self.active = False  # a turn was begun and has not ended yet
        self.cancel_requested = False
        self.resume: tuple[Any, PendingInterrupt] | None = None  # (answer, interrupt)
        self.taken = 0  # how many queued messages the current turn took
        self.waiter: anyio.Event | None = None  # made only when someone waits
        # While the agent runs: the history length and metadata the turn started
        # from, which is what a save made meanwhile stores (see ``started_with``).
        self.started_with: tuple[int, dict[str, Any]] | None = None
        # While the agent runs: its Turn, the name of its step journal (see ``_steps``)
        # and the index its next step gets.
        self.current: Turn | None = None
        self.journal_name: str | None = None
        self.next_step = 0

    def begin(self, *, taken: int) -> None:
        self.active = True
        self.taken = taken

    def begin_resume(self, answer: Any, interrupt: PendingInterrupt) -> None:
        self.resume = (answer, interrupt)
        self.active = True

    def enter(
        self,
        scope: anyio.CancelScope,
        *,
        mark: int,
        metadata: dict[str, Any],
        turn: Turn | None = None,
        journal: str | None = None,
    ) -> None:
        """The agent is called inside ``scope`` (cancelled at once if a cancel came first),
        on a State whose history had ``mark`` messages and this ``metadata``.

        A save made while the agent runs stores that view, not the agent's
        unfinished work: a crash reruns the turn from where it started, so the
        rerun never finds the cut run's partial output (a tool result, say) in
        its history.
        """
        self.scope = scope
        self.started_with = (mark, metadata)
        self.current = turn
        self.journal_name = journal
        self.next_step = 0
        if self.cancel_requested:
            scope.cancel()

    def leave(self) -> None:
        """The agent returned: the scope, the resume and a cancel request are spent."""
        self.scope = None
        self.resume = None
        self.cancel_requested = False
        self.started_with = None
        self.current = None
        self.journal_name = None

    def end(self) -> None:
        # A cancel that came after the agent returned was too late for this turn,
        # and must not cut the next one (a turn of the messages queued behind).
        self.active = False
        self.cancel_requested = False
        self.release_waiters()

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


# -- the worker --------------------------------------------------------------------


async def work(actor: Actor, *, begun: bool = False, idle_reason: StopReason | None = None) -> None:
    """The worker: run what waits (``begun``: a turn begun by the caller) until nothing
    is left, restart by policy on a crash, finish a requested stop."""
    try:
        if idle_reason is not None and await idle_stop(actor, idle_reason):
            return
        while True:
            reason = actor.life.reason
            # A turn this worker was spawned for still runs on drain (its message is
            # already saved); any other stop wins over further work.
            if reason is not None and not (begun and reason is StopReason.DRAIN):
                if begun:
                    actor.hand_back_unstarted_turn()
                await finish_stop(actor)
                return
            try:
                if begun:
                    begun = False
                    await run_turn(actor)
                elif actor.turn.resume is not None:
                    await run_turn(actor, resume=True)
                elif actor.queue_ready:
                    if not await take_turn_slot(actor):  # the owner's limit (_quotas)
                        continue  # left the line: a stop, a drain or a cancel
                    if actor.state.interrupt is not None:
                        actor.abandon_interrupt()
                    actor.begin_turn()
                    await actor.persist("turn_start", shield=False)
                    if actor.closed:
                        continue
                    await run_turn(actor)
                else:
                    break
            except Crash as crash:
                if not await restart_by_policy(actor, crash.error):
                    return
            except Exception as exc:  # an internal invariant broke: restart by policy
                actor.log().exception("actor_internal_error")
                if not await restart_by_policy(actor, exc):
                    return
    finally:
        actor.release_worker()


# -- one turn ----------------------------------------------------------------------


async def run_turn(actor: Actor, *, resume: bool = False) -> None:
    """Run one turn of ``actor`` and save its outcome, in a ``sessionvisor.turn`` span.

    Raises:
        Crash: the turn failed and the options ask for a restart.
    """
    parent = actor.take_turn_context()
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
    taken = 0 if resume else control.taken  # user messages this turn took from the queue
    if resume:
        assert control.resume is not None
        answer, answered = control.resume
    agent = actor.agent
    turn = Turn(
        state=agent_view(state),  # without superseded messages
        agent_id=actor.agent_id,
        conversation_id=actor.conversation_id,
        scope=actor.scope,
        extra=actor.extra,
        sink=actor,
    )
    outcome: Any = None
    error: Exception | None = None
    journal = journal_name(state, mark=mark, taken=taken, answered=answered)
    with anyio.CancelScope() as scope:
        actor.enter_turn(scope, mark=mark, metadata=metadata, turn=turn, journal=journal)
        try:
            if answer is NO_ANSWER:
                outcome = await run_agent(agent, turn, history[mark - 1] if taken else None)
            else:
                outcome = await _call_resume(agent, turn, answer=answer)
            if not isinstance(outcome, Done | Interrupt | Pause):
                raise TypeError(
                    f"agent {agent!r} returned {outcome!r}; expected Done, Interrupt or Pause"
                )
        except Exception as exc:
            error = exc
    actor.leave_turn()
    try:
        if scope.cancel_called or error is not None:
            return await _roll_back(
                actor,
                state,
                mark=mark,
                metadata=metadata,
                taken=taken,
                answered=answered,
                answer=answer,
                error=error,
            )
        rejoin(outcome.state, view=turn.state, full=state)
        _finish_outcome(actor, outcome, turn=turn, history=history, mark=mark)
        retire_journal(actor.state)
        if isinstance(outcome, Interrupt):
            await actor.persist("interrupt")
            return "interrupted"
        if isinstance(outcome, Pause):
            await actor.persist("pause")
            return "paused"
        await actor.persist("completion", shield=False)
        return "completed"
    finally:
        actor.end_turn()


async def _roll_back(
    actor: Actor,
    state: State,
    *,
    mark: int,
    metadata: dict[str, Any],
    taken: int,
    answered: PendingInterrupt | None,
    answer: Any,
    error: Exception | None,
) -> str:
    stop_reason = actor.life.reason
    # A turn cut short by a stop does not hold the queue: those messages were never
    # refused by the user, so the next wake answers them.
    actor.roll_back(
        state, mark=mark, metadata=metadata, held=stop_reason is None or error is not None
    )
    if error is None and stop_reason is not None:
        # Stopped (or drained) mid-turn, not cancelled by the user: hand the work back
        # (its step journal stays, so the rerun replays what completed).
        actor.hand_back_turn(answered=answered, answer=answer, mark=mark, taken=taken)
        actor.log().info("turn_cancelled", by=str(stop_reason))
        return "handed_back"
    retire_journal(state)
    if error is None:
        actor.keep_partial_answer()  # only when the cancel asked to keep it
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


async def _call_resume(agent: Any, turn: Turn, *, answer: Any) -> Any:
    hook: Callable[[Turn, Any], Awaitable[Any]] | None = getattr(agent, "resume", None)
    if hook is None:
        # Without a resume hook the answer reaches the agent as a user message.
        turn.state.messages.append(
            Message(role="user", content=_as_content(answer), metadata={"resume": True})
        )
        return await agent.run(turn)
    return await hook(turn, answer)


def _finish_outcome(
    actor: Actor, outcome: Any, *, turn: Turn, history: list[Message], mark: int
) -> None:
    new = adopt(outcome.state, actor.state)
    actor.replace_state(new)
    added = _added_messages(new.messages, history=history, mark=mark)
    reply = outcome.reply
    if reply is None and isinstance(outcome, Done):
        streamed = turn.streamed_text
        if streamed and not any(m.role == "assistant" for m in added):
            reply = streamed
    if reply is not None:
        message = Message(role="assistant", content=reply)  # agent output: validated
        new.messages.append(message)
        added.append(message)
    actor.announce_added(added)
    if isinstance(outcome, Interrupt):
        interrupt = new_interrupt(outcome.kind, outcome.data)
        actor.hold_after_turn(Status.INTERRUPTED, interrupt=interrupt)
    elif isinstance(outcome, Pause):
        actor.hold_after_turn(Status.PAUSED)
        if outcome.reason:
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
        new.usage = old.usage
        new.journal = old.journal
        new.steps = old.steps
        new.superseded = old.superseded
    return new


def _added_messages(messages: list[Message], *, history: list[Message], mark: int) -> list[Message]:
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


def _as_content(answer: Any) -> Content:
    if isinstance(answer, str):
        return answer
    return json.dumps(answer, default=str)
