"""Accepting a user message: building it, preprocessing it, recognising a retry.

A message is built without re-validation (the supervisor checked its input),
passed through the session's ``message_preprocessor`` (which may reject it, or
split it into a display copy and a model copy), and, when the client gave it an
id, checked against the messages the conversation already holds so that a
retried send is not applied twice.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from .._clock import utcnow
from .._errors import MessageRejected
from ..state import Content, Message, State

__all__: list[str] = ["PreprocessContext", "accepted", "new_message", "preprocess"]


def new_message(
    role: Any,
    content: Content,
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
    pre: Any, message: Message, scope: Any, conversation_id: str, agent_id: str, state: State
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
