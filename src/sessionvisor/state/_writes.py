"""Checks and messages every store shares, so the three agree word for word."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import NothingStored, StaleWriteError, StoreClosed
from ._store import HOLDING_LIFECYCLES, LIFECYCLES

__all__ = [
    "UNANSWERED_LIFECYCLES",
    "check_lifecycle",
    "check_limit",
    "closed",
    "is_unanswered",
    "nothing_to_quarantine",
    "quarantine_key",
    "stale_write",
]

#: A save with one of these lifecycles leaves work the agent has not answered yet.
UNANSWERED_LIFECYCLES = frozenset({"turn_start", "queued"})


def is_unanswered(lifecycle: str, state: Any) -> bool:
    """Return True when a conversation saved like this still has work a start would
    do (what ``StateStore.unanswered`` lists; every store keeps this rule).

    That is: it was saved at the start of a turn or with a queued message; or it
    holds an acknowledged answer whose turn was cut short; or it has queued
    messages that are not held (no question pending, and a lifecycle not in
    ``HOLDING_LIFECYCLES``). A state that is not a mapping counts by its
    lifecycle only.
    """
    if lifecycle in UNANSWERED_LIFECYCLES:
        return True
    if not isinstance(state, Mapping):
        return False
    interrupt = state.get("interrupt")
    if isinstance(interrupt, Mapping):
        # A question waiting for a human holds the queue; one whose acknowledged
        # answer a stop cut short is carried out by the next start.
        return interrupt.get("answered") is True
    return bool(state.get("queued")) and lifecycle not in HOLDING_LIFECYCLES


def check_limit(limit: int | None) -> None:
    """Raise ValueError unless ``limit`` (of ``unanswered``) is None or an int >= 0."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"unanswered(limit=...) must be None or an int >= 0, got {limit!r}")


def closed(store: object) -> StoreClosed:
    """Build the error a closed store raises."""
    return StoreClosed(f"{store!r} is closed")


def check_lifecycle(conversation_id: str, lifecycle: str) -> None:
    """Raise ValueError when ``lifecycle`` is not one of ``LIFECYCLES``."""
    if lifecycle not in LIFECYCLES:
        raise ValueError(
            f"cannot save conversation {conversation_id!r}: unknown lifecycle {lifecycle!r} "
            f"(expected one of {', '.join(sorted(LIFECYCLES))})"
        )


def stale_write(conversation_id: str, expected: int | None, actual: int | None) -> StaleWriteError:
    """Build the StaleWriteError for a save that expected ``expected`` but found ``actual``."""
    if expected is None:
        return StaleWriteError(
            f"cannot create conversation {conversation_id!r}: it already exists "
            f"at version {actual} (another writer created it)"
        )
    if actual is None:
        return StaleWriteError(
            f"cannot save conversation {conversation_id!r}: expected stored version "
            f"{expected} but it no longer exists (deleted or quarantined by another writer)"
        )
    return StaleWriteError(
        f"cannot save conversation {conversation_id!r}: expected stored version "
        f"{expected} but it is {actual} (another writer saved it)"
    )


def quarantine_key(conversation_id: str, n: int) -> str:
    """Return the ``n``-th quarantine key of a conversation."""
    return f"{conversation_id}#quarantine-{n}"


def nothing_to_quarantine(conversation_id: str) -> NothingStored:
    """Build the error for quarantining a conversation no store row holds."""
    return NothingStored(f"cannot quarantine conversation {conversation_id!r}: nothing is stored")
