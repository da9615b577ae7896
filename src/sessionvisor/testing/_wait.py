from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from ..sessions import Event, SessionSupervisor, Status

__all__ = [
    "collect_until",
    "wait_for_event",
    "wait_for_status",
    "wait_until",
    "wait_until_settled",
    "wait_until_sync",
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
    condition: Callable[[], object],
    *,
    timeout: float = 5.0,
    interval: float = 0.001,
    message: str | Callable[[], str] | None = None,
) -> float:
    """Return once ``condition()`` is true, with the seconds that took.

    ``condition`` may be a plain or an async function; what it returns counts
    by its truth (a non-empty list is true). It is checked at once, then every
    ``interval`` seconds: use it for what no event announces (a counter of a
    fake, a row in a store written from a thread, a server in another process;
    poll those less often, say every 0.05 s).

    Args:
        condition: what to wait for.
        timeout: how long to wait, in seconds.
        interval: the pause between two checks, in seconds.
        message: what was awaited, for the error; a function is called only
            on timeout, so it can describe the state at that moment (the end
            of a server's log, say).

    Raises:
        TimeoutError: the condition was still false after ``timeout`` seconds;
            its message says how long it waited and ``message``.
    """
    started = anyio.current_time()
    with anyio.move_on_after(timeout):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return anyio.current_time() - started
            await anyio.sleep(interval)
    raise TimeoutError(_timed_out(timeout, message))


def wait_until_sync(
    condition: Callable[[], object],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
    message: str | Callable[[], str] | None = None,
) -> float:
    """``wait_until`` for code without an event loop: a test driving a subprocess.

    Return once ``condition()`` (a plain function) is true, with the seconds
    that took; it is checked at once, then every ``interval`` seconds, with
    ``time.sleep`` in between (never call it from async code).

    Raises:
        TimeoutError: the condition was still false after ``timeout`` seconds;
            its message says how long it waited and ``message``.
    """
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if condition():
            return time.monotonic() - started
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(_timed_out(timeout, message))
        time.sleep(min(interval, deadline - now))


def _timed_out(timeout: float, message: str | Callable[[], str] | None) -> str:
    text = f"timed out after {timeout} s"
    if message is None:
        return text
    return f"{text} waiting until {message if isinstance(message, str) else message()}"


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
