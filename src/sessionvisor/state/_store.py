"""The ``StateStore`` protocol and the record it keeps per conversation."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from .._clock import utcnow

__all__ = ["HOLDING_LIFECYCLES", "LIFECYCLES", "Lifecycle", "StateStore", "StoredConversation"]

Lifecycle = Literal[
    "turn_start",
    "queued",
    "completion",
    "interrupt",
    "pause",
    "dismiss",
    "error",
    "cancel",
    "shutdown",
]
LIFECYCLES: frozenset[str] = frozenset(Lifecycle.__args__)  # type: ignore[attr-defined]
#: A save with one of these lifecycles leaves its queue held: the messages wait for
#: the user (after a question, a pause, an error, a cancel, or a stop that found
#: them held), so a start runs none of them. After any other lifecycle (a turn
#: that completed, say) queued messages are work a start runs.
HOLDING_LIFECYCLES: frozenset[str] = frozenset(
    {"interrupt", "pause", "error", "cancel", "shutdown"}
)


@attrs.frozen(kw_only=True)
class StoredConversation:
    """One conversation as a store keeps it.

    Attributes:
        state: the serialized State (a JSON-ready dict, see ``state.dump_state``).
        version: the write version; each successful save adds one.
        owner: the owner key of the scope that created the conversation, or None.
        route_key: the route the conversation was made with (sticky routing).
        request_opts: the request options that made it (sticky routing).
        last_seq: the last event sequence number issued for it.
        updated_at: when it was last saved (UTC).
        lifecycle: why it was last saved (``turn_start``, ``completion``, ...).
    """

    state: dict[str, Any]
    version: int = 0
    owner: str | None = None
    route_key: str | None = None
    request_opts: dict[str, Any] = attrs.field(factory=dict)
    last_seq: int = 0
    updated_at: datetime = attrs.field(factory=utcnow)
    lifecycle: str | None = None


@runtime_checkable
class StateStore(Protocol):
    """Where conversations persist. Every method is async.

    The version check in ``save`` is the only guard against two writers: a
    writer that lost the race gets ``StaleWriteError`` and must stop writing.

    Optional method (not part of this protocol's checked body, so a store
    without it is still a ``StateStore``; callers look it up with ``getattr``):

    ``async def unanswered(self, limit: int | None = None) -> list[str]``
        The ids of the conversations with work the agent has not answered:
        the last save's lifecycle was ``turn_start`` or ``queued``, or the
        stored ``state["queued"]`` is not empty. Quarantined rows are never
        listed. The stores of this package answer from an index kept on every
        save and delete, never by reading every row; ``limit`` caps the
        number of ids (None: all), in no particular order.

    Optional durable timers (all five or none; ``SessionSupervisor.schedule``
    refuses a store without them with ``TypeError``). A timer is a
    ``StoredTimer`` (key, due, payload, id) kept per conversation by key:

    ``async def put_timer(self, conversation_id, timer) -> None``
        Store it, replacing the conversation's timer with the same key.
    ``async def drop_timer(self, conversation_id, key, *, timer_id=None) -> bool``
        Remove it (with ``timer_id``: only while the stored one has that id);
        return whether a row was removed.
    ``async def list_timers(self, conversation_id) -> list[StoredTimer]``
        The conversation's timers, soonest first.
    ``async def due_timers(self, until, limit) -> list[tuple[str, StoredTimer]]``
        Up to ``limit`` timers of any conversation due at or before ``until``
        (an aware datetime), soonest first, with their conversation ids. They
        stay stored until dropped. Answered from an index on the due time.
    ``async def next_timer_due(self) -> datetime | None``
        The soonest due time of any stored timer (None: none is stored).

    And, when the store can, ``async def drop_fired_timers(self, fired) ->
    list[bool]``: remove many timers, each given as ``(conversation_id, key,
    timer_id)``, in one statement or transaction, each only while the stored one
    has that id; return, per timer, whether it was removed. The timer loop
    removes fired timers with it, and with ``drop_timer`` one at a time when the
    store has no such method.

    ``delete`` removes the conversation's timers too.
    """

    async def load(self, conversation_id: str) -> StoredConversation | None:
        """Return the stored conversation, or None when there is none.

        Raises:
            CorruptStateError: the stored row cannot be read; it is left untouched.
        """
        ...

    async def save(
        self,
        conversation_id: str,
        record: StoredConversation,
        *,
        expected_version: int | None,
        lifecycle: Lifecycle,
    ) -> int:
        """Write ``record`` if the stored version is ``expected_version``.

        ``expected_version=None`` means the conversation must not exist yet.
        The record's own ``version`` and ``updated_at`` are ignored.

        Returns:
            The new version.

        Raises:
            StaleWriteError: the stored version is not ``expected_version``.
        """
        ...

    async def delete(self, conversation_id: str) -> None:
        """Remove the conversation; a missing one is not an error."""
        ...

    async def quarantine(self, conversation_id: str) -> str:
        """Move an unreadable row aside under a new key and return that key."""
        ...


@runtime_checkable
class FencingStore(StateStore, Protocol):
    """A ``StateStore`` that several processes share and that refuses stale writers.

    A cluster of supervisors needs this capability (``PostgresStore`` has it):
    each owner of a conversation holds a lease with an epoch, raises the stored
    epoch with ``fence`` before loading, and passes its epoch with every
    ``save``; the store refuses a save whose epoch is lower than the stored one.
    """

    async def fence(self, conversation_id: str, epoch: int) -> int:
        """Raise the conversation's stored epoch to at least ``epoch``; return it
        (above ``epoch`` when a newer owner fenced it already)."""
        ...

    async def save(
        self,
        conversation_id: str,
        record: StoredConversation,
        *,
        expected_version: int | None,
        lifecycle: Lifecycle,
        epoch: int | None = None,
    ) -> int:
        """``StateStore.save``; with ``epoch``, refused (``StaleWriteError``) when
        the stored epoch is higher."""
        ...
