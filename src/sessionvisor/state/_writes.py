"""Checks and messages every store shares, so the three agree word for word."""

from __future__ import annotations

from .._errors import StaleWriteError
from ._store import LIFECYCLES

__all__ = ["check_lifecycle", "nothing_to_quarantine", "quarantine_key", "stale_write"]


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


def nothing_to_quarantine(conversation_id: str) -> LookupError:
    """Build the error for quarantining a conversation no store row holds."""
    return LookupError(f"cannot quarantine conversation {conversation_id!r}: nothing is stored")
