from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from .._errors import SubscriberOverflow
from ..sessions import Event, SessionSupervisor, Subscription

__all__ = ["EventRecorder", "record_events"]

E = TypeVar("E", bound=Event)


class EventRecorder:
    """Every event one subscription delivered, in order, and how it ended.

    Fill it with ``record_events`` (a block that records in the background) or
    with ``tg.start(recorder.record, supervisor, conversation_id)`` when the
    recording must outlive the supervisor's ``async with`` (to watch a drain).

    Attributes:
        events: the events delivered so far, in order.
        overflowed: the ``SubscriberOverflow`` that ended the subscription, if one did.
        ended: True once the subscription ended (overflow, or the supervisor closed it).
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.overflowed: SubscriberOverflow | None = None
        self.ended = False
        # Created on first wait, so a recorder can be made outside an event loop.
        self._changed: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<EventRecorder {len(self.events)} events{' ended' if self.ended else ''}>"

    def of(self, cls: type[E]) -> list[E]:
        """Return the recorded events of class ``cls``, in order."""
        return [e for e in self.events if isinstance(e, cls)]

    async def wait_for(
        self, predicate: Callable[[Event], bool], *, count: int = 1, timeout: float = 5.0
    ) -> list[Event]:
        """Wait until ``count`` recorded events match ``predicate``.

        Woken by each new event, so it never polls and never sleeps.

        Returns:
            Every recorded event that matches (at least ``count`` of them), in order.

        Raises:
            TimeoutError: fewer than ``count`` matched after ``timeout`` seconds.
            LookupError: the subscription ended with fewer than ``count`` matches.
        """
        with anyio.fail_after(timeout):
            while True:
                matches = [e for e in self.events if predicate(e)]
                if len(matches) >= count:
                    return matches
                if self.ended:
                    raise LookupError(
                        f"the subscription ended after {len(matches)} of {count} matching "
                        f"events; it delivered {self.events!r}"
                    )
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _pump(self, subscription: Subscription) -> None:
        try:
            async for event in subscription:
                self.events.append(event)
                self._notify()
        except SubscriberOverflow as exc:
            self.overflowed = exc
        self.ended = True
        self._notify()

    async def record(
        self,
        supervisor: SessionSupervisor,
        conversation_id: str,
        *,
        after: int | None = None,
        scope: Any = None,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Subscribe and record until the subscription ends; start it with ``tg.start``.

        ``tg.start`` returns once the subscription is registered, so no event
        published after it is missed.

        Raises:
            Whatever ``SessionSupervisor.subscribe`` raises (``AccessDenied``, ...).
        """
        async with supervisor.subscribe(conversation_id, after=after, scope=scope) as sub:
            task_status.started()
            await self._pump(sub)


@asynccontextmanager
async def record_events(
    supervisor: SessionSupervisor,
    conversation_id: str,
    *,
    after: int | None = None,
    scope: Any = None,
) -> AsyncIterator[EventRecorder]:
    """Subscribe, and record every event in the background while the block runs.

    The subscription is registered before the block starts; it ends with the
    block. Use ``EventRecorder.wait_for`` to wait for what the test expects.

    Raises:
        Whatever ``SessionSupervisor.subscribe`` raises (``AccessDenied``, ...).
    """
    recorder = EventRecorder()
    async with (
        anyio.create_task_group() as tg,
        supervisor.subscribe(conversation_id, after=after, scope=scope) as sub,
    ):
        tg.start_soon(recorder._pump, sub)
        # Let the pump take the events already buffered (the snapshot) before the block.
        await anyio.lowlevel.checkpoint()
        try:
            yield recorder
        finally:
            tg.cancel_scope.cancel()
