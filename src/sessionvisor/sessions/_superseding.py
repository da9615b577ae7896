"""Superseded messages: what a regenerate or an edit hides, and how it stays hidden.

The stored history only grows (the stores append message rows and never
rewrite them for a regenerate), so a message that a regenerate or an edit
replaces stays in ``State.messages`` and its id joins ``State.superseded``.
Everything people and agents read goes through a view without them:

- ``visible``: the State ``SessionSupervisor.load`` returns (and so the HTTP
  history);
- ``agent_view``: the State a turn's agent works on; ``rejoin`` puts the hidden
  messages back under what the agent added, so the stored list keeps growing
  at its end.

When nothing is superseded both views are the State itself: no copy, no cost.
"""

from __future__ import annotations

from .._errors import InvalidStatus, UnknownMessage
from ..state import Message, State

__all__: list[str] = ["agent_view", "find_user_message", "rejoin", "shown", "visible"]

#: The metadata keys naming the message a re-asked user message replaces.
REPLACES = ("regenerates", "edits")


def shown(state: State) -> list[Message]:
    """The history without its superseded messages (the list itself when none are)."""
    if not state.superseded:
        return state.messages
    hidden = set(state.superseded)
    return [m for m in state.messages if m.id not in hidden]


def visible(state: State) -> State:
    """``state`` as people see it: without its superseded messages (a copy only when
    some are hidden; its ``superseded`` still lists their ids)."""
    if not state.superseded:
        return state
    return state.model_copy(update={"messages": shown(state)})


def agent_view(state: State) -> State:
    """The State a turn's agent runs on: ``state`` itself, or a shallow copy whose
    ``messages`` leaves the superseded ones out (its metadata and queue are the
    same objects, so what the agent changes there is changed in ``state``)."""
    if not state.superseded:
        return state
    return state.model_copy(update={"messages": shown(state)})


def rejoin(result: State, *, view: State, full: State) -> None:
    """After a turn that ran on ``view``: when the agent's ``result`` extends the
    history it was shown, the messages it added go at the end of the whole
    history (``full.messages``, the same list object, so a save appends them),
    and ``result`` holds that list. A result that rewrote the history is kept
    as the agent made it."""
    if view is full or not full.superseded:
        return
    before = shown(full)
    messages = result.messages
    count = len(before)
    if len(messages) < count or any(a is not b for a, b in zip(messages, before, strict=False)):
        return
    history = full.messages
    history.extend(messages[count:])
    result.messages = history


def find_user_message(
    state: State, message_id: str | None, *, conversation_id: str, call: str, status: str
) -> int:
    """The position in ``state.messages`` of the user message a regenerate or an edit
    starts from: ``message_id`` (or the message that re-asked it since), by default
    the last visible user message.

    Raises:
        UnknownMessage: no visible message has that id (it never existed, or it was
            superseded and nothing replaced it).
        InvalidStatus: the message is not a user message, it still waits in the
            queue, or (no id) the history has no user message.
    """
    messages = state.messages
    hidden = set(state.superseded)
    cid = conversation_id
    if message_id is None:
        for i in range(len(messages) - 1, -1, -1):
            if _asked(messages[i]) and messages[i].id not in hidden:
                return i
        raise InvalidStatus(
            f"cannot {call} conversation {cid!r}: its history has no user message", status
        )
    wanted = _latest(messages, hidden, message_id)
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if message.id != wanted or message.id in hidden:
            continue
        if not _asked(message):
            what = "a fired timer" if message.role == "user" else f"an {message.role} message"
            raise InvalidStatus(
                f"cannot {call} message {message_id!r} of conversation {cid!r}: it is "
                f"{what}, not a user message",
                status,
            )
        return i
    if any(m.id == message_id for m in state.queued):
        raise InvalidStatus(
            f"cannot {call} message {message_id!r} of conversation {cid!r}: it waits in "
            "the queue and has not been answered yet",
            status,
        )
    why = " (it was superseded)" if message_id in hidden else ""
    raise UnknownMessage(f"conversation {cid!r} has no message {message_id!r}{why}", message_id)


def _asked(message: Message) -> bool:
    """A message a user wrote: a fired timer is queued as a user message too, but
    nobody asked it, so it is neither regenerated nor edited."""
    return message.role == "user" and "timer" not in message.metadata


def _latest(messages: list[Message], hidden: set[str], message_id: str) -> str:
    """Follow a superseded user message to the message that re-asked it, and so on."""
    if message_id not in hidden:
        return message_id
    newer: dict[str, str] = {}
    for message in messages:
        for key in REPLACES:
            old = message.metadata.get(key)
            if isinstance(old, str):
                newer[old] = message.id
    current, seen = message_id, {message_id}
    while current in hidden and current in newer:
        current = newer[current]
        if current in seen:
            break
        seen.add(current)
    return current
