"""A user message from its arrival to the turn that takes it: building it,
preprocessing it, recognising a retry, and the queue where it waits.

A message is built without re-validation (the supervisor checked its input),
passed through the session's ``message_preprocessor`` (which may reject it, or
split it into a display copy and a model copy), and, when the client gave it an
id, checked against the messages the conversation already holds so that a
retried send is not applied twice.

Queued messages live in ``State.queued`` (so they are saved with the State and
survive a restart or a stop) and are bounded by ``max_queued``. After an
interrupt, a pause, an error or a cancel the queue is *held*: it waits for the
user (a send, a resume, a dismiss) instead of running by itself. A crash
restart or a send lifts the hold. A turn cut short by a stop hands its messages
back to the front of the queue, unheld, so the next wake answers them. The
functions here are the rules; the actor keeps the hold and applies them.
"""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Any

import attrs

from .._clock import utcnow
from .._errors import (
    MessageRejected,
    MessageTooLarge,
    NotRunning,
    QueueFull,
    StoreUnavailable,
)
from ..state import HOLDING_LIFECYCLES, Content, Message, State
from ._timer_turns import timer_cut
from ._turns import adopt
from ._validation import content_size_ok

if TYPE_CHECKING:
    from ._actor import Actor

__all__: list[str] = [
    "Accepted",
    "PreprocessContext",
    "abandon_interrupt",
    "accepted",
    "check_not_superseded",
    "check_room",
    "check_saved",
    "give_back",
    "held_after_boot",
    "new_message",
    "preprocess",
    "send_message",
    "take",
]


@attrs.frozen
class Accepted:
    """What ``Actor.send`` did. ``queued``: the message waits behind running work;
    ``duplicate``: a message with that client id was already accepted (nothing
    changed; ``queued`` says whether it still waits).
    """

    queued: bool
    duplicate: bool


def new_message(
    role: Any,
    content: Content,
    *,
    metadata: dict[str, Any] | None = None,
    message_id: str | None = None,
) -> Message:
    """Build a message from input the runtime already checked, without re-validating it."""
    if not isinstance(content, str):
        content = [dict(part) for part in content]
    return Message.model_construct(
        # os.urandom: as random as uuid4().hex, at a fraction of the cost
        id=os.urandom(16).hex() if message_id is None else message_id,
        role=role,
        content=content,
        created_at=utcnow(),
        metadata={} if metadata is None else metadata,
    )


class PreprocessContext:
    """What a message preprocessor may look at (``state`` is for reading only)."""

    __slots__ = ("agent_id", "conversation_id", "scope", "state")

    def __init__(self, conversation_id: str, agent_id: str, scope: Any, state: State) -> None:
        self.conversation_id = conversation_id
        self.agent_id = agent_id
        self.scope = scope
        self.state = state


async def preprocess(
    pre: Any, message: Message, *, scope: Any, conversation_id: str, agent_id: str, state: State
) -> Message:
    """Run the message preprocessor; return the message to store.

    Raises:
        MessageRejected: the preprocessor raised.
        TypeError: it returned something other than a Message or a pair of them.
    """
    ctx = PreprocessContext(conversation_id, agent_id, scope, state.model_copy(deep=True))
    try:
        result = pre(message, ctx)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        raise MessageRejected(
            f"message for conversation {conversation_id!r} was rejected: {exc}"
        ) from exc
    if isinstance(result, Message):
        return result
    if (
        isinstance(result, tuple)
        and len(result) == 2
        and all(isinstance(m, Message) for m in result)
    ):
        shown, model = result
        merged: Message = model.model_copy(
            update={"metadata": {**model.metadata, "display": shown.model_dump(mode="json")}}
        )
        return merged
    raise TypeError(
        f"message_preprocessor returned {result!r}; expected a Message or "
        "(display Message, model Message)"
    )


def accepted(state: State, message_id: str) -> bool | None:
    """Whether a message with this client id waits (True) or was taken (False); None: new."""
    if any(m.id == message_id for m in state.queued):
        return True
    # Newest first: a retry is almost always of a recent message.
    if any(m.id == message_id for m in reversed(state.messages)):
        return False
    return None


# -- sending -----------------------------------------------------------------------


async def send_message(
    actor: Actor, content: Content, scope: Any, *, message_id: str | None
) -> Accepted:
    """Accept a user message for ``actor`` (see ``Actor.send``)."""
    actor.check_open()
    if message_id is not None:
        known = accepted(actor.state, message_id)
        if known is not None:
            await _stored_before_acknowledged(actor)
            return Accepted(queued=known, duplicate=True)
    max_bytes = actor.opts.max_message_bytes
    if not content_size_ok(content, max_bytes):
        raise MessageTooLarge(
            f"content of the message for conversation {actor.conversation_id!r} is larger than "
            f"max_message_bytes={max_bytes} as JSON"
        )
    message = new_message("user", content, message_id=message_id)
    pre = actor.opts.message_preprocessor
    if pre is not None:
        message = await preprocess(
            pre,
            message,
            scope=scope,
            conversation_id=actor.conversation_id,
            agent_id=actor.agent_id,
            state=actor.state,
        )
        actor.check_open()  # it may have stopped while the preprocessor ran
        if message_id is not None:
            known = accepted(actor.state, message_id)  # a retry may have won the race meanwhile
            if known is not None:
                await _stored_before_acknowledged(actor)
                return Accepted(queued=known, duplicate=True)
            if message.id != message_id:
                message = message.model_copy(update={"id": message_id})
    queued = actor.queue_user_message(message, scope)
    if queued and not actor.busy:
        actor.claim_worker()  # no turn slot free for its owner: the worker waits for one
    if queued:
        # Saved mid-turn, the record says a turn was running (``turn_start``): if the
        # process dies now, recovery runs that turn again before the queue.
        saved = await actor.persist(actor.mid_work_lifecycle)
    else:
        saved = await actor.persist("turn_start")
        # No await between the save and the hand-over: a cancelled caller still hands over.
        actor.hand_over_begun_turn()
    check_not_superseded(actor)
    check_saved(actor, saved)
    return Accepted(queued=queued, duplicate=False)


async def _stored_before_acknowledged(actor: Actor) -> None:
    """A retried send: acknowledge it again only once the store holds it.

    The first attempt may have been refused with ``StoreUnavailable`` while
    the message stayed in memory; the retry must not be told "stored" until
    a save carried it.
    """
    if actor.unsaved:
        saved = await actor.persist(actor.mid_work_lifecycle)
        check_not_superseded(actor)
        check_saved(actor, saved)


def check_not_superseded(actor: Actor) -> None:
    """After a save a command waited on: fail the command if the session is gone."""
    life = actor.life
    if life.error is not None:
        actor.check_open()  # gave up while the message waited: not saved here
    if life.superseded:
        raise NotRunning(
            f"conversation {actor.conversation_id!r} was taken over by another writer "
            "(its stored version moved on); the message was not saved here"
        )


def check_saved(actor: Actor, saved: bool, *, what: str = "the message") -> None:
    """Refuse to acknowledge a command whose save failed.

    It stays in memory and the save is retried, but a crash before the retry
    lands (or, in a cluster, losing the lease) would lose what the caller was
    told is kept: the caller is told it is not stored, and a retry with the
    same message id is recognised.
    """
    if not saved:
        raise StoreUnavailable(
            f"conversation {actor.conversation_id!r}: {what} could not be stored "
            "(the store is failing); retry it (a message with the same message id)"
        )


# -- the queue's rules -------------------------------------------------------------


def check_room(state: State, *, max_queued: int, conversation_id: str) -> None:
    if len(state.queued) >= max_queued:
        raise QueueFull(
            f"conversation {conversation_id!r} already has "
            f"{len(state.queued)} queued messages (max_queued={max_queued})"
        )


def take(state: State) -> list[Message]:
    """Start a turn: the queued messages join the history, in order. A fired
    timer's message is a turn of its own: a turn takes it alone, or the messages
    before it."""
    taken = state.queued
    cut = timer_cut(taken)
    if cut < len(taken):
        taken, state.queued = taken[:cut], taken[cut:]
    else:
        state.queued = []
    state.messages.extend(taken)
    return taken


def give_back(state: State, *, mark: int, taken: int) -> None:
    """A turn cut short by a stop: its user messages (the ``taken`` before ``mark`` in
    the history) return to the front of the queue."""
    history = state.messages
    back = history[mark - taken : mark]
    del history[mark - taken : mark]
    state.queued[:0] = back


def held_after_boot(state: State, *, stored_lifecycle: str | None, restored: bool) -> bool:
    """On a start: messages left mid-turn, or queued behind a turn that completed,
    run; ones held (a question, a pause, an error, a cancel, a stop) stay held."""
    return state.interrupt is not None or (restored and stored_lifecycle in HOLDING_LIFECYCLES)


def abandon_interrupt(state: State, agent: Any) -> State:
    """A send on an interrupted session abandons the interrupt, recorded by the agent or us."""
    interrupt = state.interrupt
    assert interrupt is not None
    state.interrupt = None
    hook = getattr(agent, "abandon", None)
    if hook is not None:
        return adopt(hook(state, interrupt), state)
    state.metadata.setdefault("abandoned_interrupts", []).append(interrupt.model_dump(mode="json"))
    return state
