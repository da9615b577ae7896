from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from ..sessions import Event, SessionSupervisor, Status

__all__ = ["collect_until", "wait_for_event", "wait_for_status"]


async def wait_for_status(
    supervisor: SessionSupervisor,
    conversation_id: str,
    status: Status | str,
    *,
    timeout: float = 5.0,
    scope: Any = None,
) -> None:
    """Return once the conversation has ``status``; raise TimeoutError after ``timeout``."""
    wanted = Status(status)
    with anyio.fail_after(timeout):
        # Polling keeps this helper independent of the event stream it may be used to test.
        while await supervisor.status(conversation_id, scope=scope) != wanted:  # noqa: ASYNC110
            await anyio.sleep(0.001)


async def wait_for_event(
    events: AsyncIterator[Event],
    predicate: Callable[[Event], bool],
    *,
    timeout: float = 5.0,
) -> Event:
    """Consume events until one matches; return it (TimeoutError after ``timeout``)."""
    with anyio.fail_after(timeout):
        async for event in events:
            if predicate(event):
                return event
    raise LookupError("the subscription ended before a matching event arrived")


async def collect_until(
    events: AsyncIterator[Event],
    predicate: Callable[[Event], bool],
    *,
    timeout: float = 5.0,
) -> list[Event]:
    """Return every event up to and including the first that matches."""
    seen: list[Event] = []
    with anyio.fail_after(timeout):
        async for event in events:
            seen.append(event)
            if predicate(event):
                return seen
    raise LookupError("the subscription ended before a matching event arrived")
