"""Statuses and the events a conversation streams to its subscribers."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import attrs

from ..state import Message, PendingInterrupt

__all__ = [
    "AgentEvent",
    "Delta",
    "Event",
    "MessageAppended",
    "MessageQueued",
    "Restarted",
    "SessionFailed",
    "Shutdown",
    "Status",
    "StatusChanged",
]


class Status(StrEnum):
    """Where a conversation stands. ``not_running``: no live actor."""

    IDLE = "idle"
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    ERROR = "error"
    NOT_RUNNING = "not_running"


def describe(error: BaseException) -> str:
    """An error as events and logs show it: ``"TypeName: message"``."""
    return f"{type(error).__name__}: {error}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Message | PendingInterrupt):
        return value.model_dump(mode="json")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return value.value
    return value


@attrs.frozen(kw_only=True, slots=True)
class Event:
    """Common fields: ``seq`` (1, 2, ... per conversation), ids, and ``at`` (UTC)."""

    seq: int
    agent_id: str
    conversation_id: str
    at: datetime

    @property
    def event_type(self) -> str:
        """The event's class name, e.g. ``"StatusChanged"`` (the SSE event type)."""
        return type(self).__name__

    def to_json(self) -> dict[str, Any]:
        """Return the event as a JSON-ready dict (with ``"type"`` set to its class name)."""
        out: dict[str, Any] = {"type": type(self).__name__}
        for field in attrs.fields(type(self)):
            out[field.name] = _jsonable(getattr(self, field.name))
        return out


@attrs.frozen(kw_only=True, slots=True)
class StatusChanged(Event):
    """The status changed (or, as a subscription's first event, what it is now)."""

    status: Status
    interrupt: PendingInterrupt | None = None
    error: str | None = None
    gap: bool = False


@attrs.frozen(kw_only=True, slots=True)
class MessageAppended(Event):
    """A message joined the history (user messages show their display copy)."""

    message: Message


@attrs.frozen(kw_only=True, slots=True)
class Delta(Event):
    """A piece of the reply being streamed."""

    text: str


@attrs.frozen(kw_only=True, slots=True)
class MessageQueued(Event):
    """A user message arrived mid-turn; it runs with the next turn."""

    message: Message


@attrs.frozen(kw_only=True, slots=True)
class AgentEvent(Event):
    """A custom event from the agent (``turn.emit``) or the runtime (``store_error``)."""

    name: str
    data: Any = None


@attrs.frozen(kw_only=True, slots=True)
class Restarted(Event):
    """The actor crashed and was restarted (``attempt`` counts within the window)."""

    attempt: int
    error: str


@attrs.frozen(kw_only=True, slots=True)
class SessionFailed(Event):
    """The actor crashed more often than its policy allows; the session gave up."""

    error: str


@attrs.frozen(kw_only=True, slots=True)
class Shutdown(Event):
    """The session stopped: ``reason`` is inactivity, no_viewers, stopped, drain or superseded."""

    reason: str
    status: Status
    interrupt_restorable: bool = False
    last_activity_at: datetime | None = None
    shutdown_at: datetime | None = None
