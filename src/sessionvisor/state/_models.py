"""The conversation's data: ``State``, ``Message`` and the pending interrupt."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._clock import utcnow

__all__ = [
    "SCHEMA_VERSION",
    "Content",
    "Journal",
    "Message",
    "PendingInterrupt",
    "State",
    "StepRecord",
    "Usage",
]

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


class Usage(BaseModel):
    """What model requests cost: tokens, requests, and money when the model says.

    A model-response step (``turn.step(..., usage=...)``) stores its own; ``State.usage``
    holds the conversation's totals, each stored step counted once.
    """

    model_config = ConfigDict(extra="forbid")

    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    requests: int = Field(default=0, ge=0)
    #: In the model provider's currency; None while no step reported a cost.
    cost: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    def __add__(self, other: Usage) -> Usage:
        cost = None
        if self.cost is not None or other.cost is not None:
            cost = (self.cost or 0.0) + (other.cost or 0.0)
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            requests=self.requests + other.requests,
            cost=cost,
        )


class StepRecord(BaseModel):
    """One durable step of a turn, as stored (and as ``steps()`` lists it).

    Attributes:
        turn: the id of the turn's journal (the same for a cut turn and its reruns).
        index: the step's position in its turn, from 0, in the order the turn called it.
        name: the name the turn gave the step.
        status: ``"started"`` (running, or cut before its result was stored),
            ``"completed"`` (its result is stored), ``"failed"`` (its function
            raised: ``error`` says what), or, in ``steps()`` only, ``"unknown"``: a
            step of an ended turn that started and never completed.
        idempotent: whether the turn said the step may safely run twice.
        started_at: when it (last) started.
        duration: seconds from start to stored result; None until completed.
        result: the stored result (JSON-ready); None when ``omitted``.
        omitted: ``steps()`` leaves out a result larger than its limit.
        model: ``"module:QualName"`` of the pydantic model the result was dumped from.
        usage: what the step cost, for a model-response step.
        error: for a failed step, the exception as ``"TypeName: message"``.
    """

    model_config = ConfigDict(extra="forbid")

    turn: str
    index: int
    name: str
    status: Literal["started", "completed", "failed", "unknown"] = "started"
    idempotent: bool = False
    started_at: datetime = Field(default_factory=utcnow)
    duration: float | None = None
    result: Any = None
    omitted: bool = False
    model: str | None = None
    usage: Usage | None = None
    error: str | None = None


class Journal(BaseModel):
    """The steps of the turn in progress (or of the turn a crash or a stop cut)."""

    model_config = ConfigDict(extra="forbid")

    turn: str
    steps: list[StepRecord] = Field(default_factory=list)


class State(BaseModel):
    """Everything persisted about one conversation.

    Attributes:
        messages: the history the agent sees, oldest first.
        queued: user messages waiting for the next turn.
        metadata: free-form data of the agent and the application.
        interrupt: the pending interrupt, persisted so it survives shutdown.
        usage: the conversation's model usage totals (from model-response steps).
        journal: the durable steps of the running (or cut) turn; runtime-owned.
        steps: the steps of the turns that ended, newest last (the audit trail,
            bounded; see ``SessionSupervisor.steps``); runtime-owned.
        superseded: ids of the messages a regenerate or an edit replaced. They stay
            in ``messages`` (the stored history only grows) but neither the agent
            nor ``SessionSupervisor.load`` shows them; runtime-owned.
        version: the schema version this State was written with.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    messages: list[Message] = Field(default_factory=list)
    queued: list[Message] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    interrupt: PendingInterrupt | None = None
    usage: Usage = Field(default_factory=Usage)
    journal: Journal | None = None
    steps: list[StepRecord] = Field(default_factory=list)
    superseded: list[str] = Field(default_factory=list)
    version: int = SCHEMA_VERSION
