from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

from ..sessions import Event, SessionSupervisor, Status

__all__ = [
    "collect_until",
    "wait_for_event",
    "wait_for_status",
    "wait_until",
    "wait_until_settled",
]


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


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], *, timeout: float = 5.0
) -> None:
    """Return once ``condition()`` is true; it may be a plain or an async function.

    It is checked at once, then every millisecond: use it for what no event
    announces (a counter of a fake, a row in a store written from a thread).

    Raises:
        TimeoutError: the condition was still false after ``timeout`` seconds.
    """
    with anyio.fail_after(timeout):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.001)


async def wait_until_settled(
    supervisor: SessionSupervisor,
    conversation_id: str,
    *,
    timeout: float = 5.0,
    scope: Any = None,
) -> Status:
    """Wait until the conversation has nothing left to do, and return its status.

    Settled means: no turn runs and no queued message waits for one (a queue
    held by ``paused``, ``error``, ``cancelled`` or an interrupt counts as
    settled), or the session is not running. Each check first lets every task
    run until it blocks (``anyio.wait_all_tasks_blocked``), so a turn that is
    about to start is seen starting: the answer does not depend on how fast
    the machine is. Work on worker threads (a SQLite save) is not waited for;
    wait for the stored row itself when the test reads the store. A task of
    the test's own that never blocks (a busy loop) keeps it from returning; on
    asyncio each check may take up to 0.1 s while some task is still runnable.

    Raises:
        TimeoutError: the conversation was still busy after ``timeout`` seconds.
    """
    with anyio.fail_after(timeout):
        while True:
            await anyio.wait_all_tasks_blocked()
            handle = supervisor.get(conversation_id, scope=scope)
            if handle is None:
                return Status.NOT_RUNNING
            status = handle.status
            if status is not Status.RUNNING and not (
                status is Status.IDLE and handle.snapshot().queued
            ):
                return status
            # A turn is running (on the agent, or waiting on a thread): look again soon.
            await anyio.sleep(0.001)
