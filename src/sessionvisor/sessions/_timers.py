"""One shared timer for every session's inactivity and viewer deadlines.

An idle session must cost data, not a sleeping task, so deadlines live in one
heap run by one task of the supervisor. Each session has at most one entry: on
activity it only records the time, and when its entry comes due the session
computes its real deadline and either acts or re-enters the heap.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Protocol

import anyio
import anyio.lowlevel
import structlog

from .._clock import Clock

__all__: list[str] = []

_log = structlog.get_logger("sessionvisor")


class _Timed(Protocol):
    timer_at: float | None

    def timer_fired(self, now: float) -> None: ...


class Deadlines:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, _Timed]] = []
        self._counter = itertools.count()
        self._changed: anyio.Event | None = None
        self._sleeping_until: float | None = None
        self._sleep_scope: anyio.CancelScope | None = None

    def schedule(self, item: _Timed, deadline: float) -> None:
        """Make sure ``item`` is looked at no later than ``deadline``."""
        current = item.timer_at
        if current is not None and current <= deadline:
            return  # an earlier entry exists; it will recompute when it fires
        item.timer_at = deadline
        heapq.heappush(self._heap, (deadline, next(self._counter), item))
        if self._changed is not None:
            self._changed.set()
        if self._sleeping_until is not None and deadline < self._sleeping_until:
            assert self._sleep_scope is not None
            self._sleep_scope.cancel()

    async def run(self) -> None:
        heap = self._heap
        while True:
            if not heap:
                changed = self._changed = anyio.Event()
                await changed.wait()
                self._changed = None
                continue
            deadline = heap[0][0]
            if self._clock.now() < deadline:
                with anyio.CancelScope() as scope:
                    self._sleep_scope = scope
                    self._sleeping_until = deadline
                    await self._clock.sleep_until(deadline)
                self._sleep_scope = None
                self._sleeping_until = None
                continue
            now = self._clock.now()
            while heap and heap[0][0] <= now:
                at, _, item = heapq.heappop(heap)
                if item.timer_at != at:
                    continue  # superseded by an earlier entry
                item.timer_at = None
                try:
                    item.timer_fired(now)
                except Exception:  # one session's timer must not stop everyone's
                    _log.exception("session_timer_failed")
            await anyio.lowlevel.checkpoint()
