"""The conversation's data: ``State``, ``Message`` and the pending interrupt."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._clock import utcnow

__all__ = ["SCHEMA_VERSION", "Content", "Message", "PendingInterrupt", "State"]

#: Version of the serialized State written by this release; see ``_serializer``.
SCHEMA_VERSION = 1

Content = str | list[dict[str, Any]]


def _new_id() -> str:
    return uuid4().hex


class Message(BaseModel):
    """One message of a conversation. Only ``role`` and ``content`` are required.

    Messages are frozen: an agent changes history by building new messages, so
    a failed turn can be rolled back without copying the whole history.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=_new_id)
    role: Literal["user", "assistant", "system", "tool"]
    content: Content
    created_at: datetime = Field(default_factory=utcnow)
    metadata: dict[str, Any] = Field(default_factory=dict)

    def text(self) -> str:
        """Return the text of the message: the string, or its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        return "".join(
            str(part.get("text", "")) for part in self.content if part.get("type") == "text"
        )


class PendingInterrupt(BaseModel):
    """A question (or a notice to acknowledge) the agent is waiting on."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["question", "notice"] = "question"
    data: Any = None
    #: Names this interrupt: an answer may say which interrupt it answers
    #: (``resume(..., interrupt_id=...)``), so a retried or replayed answer can never
    #: answer a later question, even an identical one. A record written before ids
    #: existed gets one derived from its kind and data, the same on every load.
    id: str = ""
    #: Set only in a stored record, while an acknowledged answer to this interrupt
    #: is being carried out: a session that starts from that record runs the
    #: resumed turn again with ``answer`` instead of asking the question again.
    #: Never dumped (events, HTTP and the agent see the question only).
    answered: bool = Field(default=False, exclude=True)
    answer: Any = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _named(self) -> PendingInterrupt:
        if not self.id:
            text = json.dumps([self.kind, self.data], sort_keys=True, default=str)
            self.id = "i-" + hashlib.sha256(text.encode()).hexdigest()[:24]
        return self


def new_interrupt(kind: Literal["question", "notice"], data: Any) -> PendingInterrupt:
    """A new interrupt with an id of its own."""
    return PendingInterrupt(kind=kind, data=data, id="i-" + uuid4().hex)


class State(BaseModel):
    """Everything persisted about one conversation.

    Attributes:
        messages: the history the agent sees, oldest first.
        queued: user messages waiting for the next turn.
        metadata: free-form data of the agent and the application.
        interrupt: the pending interrupt, persisted so it survives shutdown.
        version: the schema version this State was written with.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    messages: list[Message] = Field(default_factory=list)
    queued: list[Message] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    interrupt: PendingInterrupt | None = None
    version: int = SCHEMA_VERSION
