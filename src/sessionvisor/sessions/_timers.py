"""One shared timer for every session's inactivity and viewer deadlines.

An idle session must cost data, not a sleeping task, so deadlines live in one
heap run by one task of the supervisor. Each session has at most one entry: on
activity it only records the time, and when its entry comes due the session
computes its real deadline and either acts or re-enters the heap.

A step that fails must not spin: an entry that, once fired, keeps asking to
run again at or before the moment it fired (its step failed and nothing moved
its deadline) is put off instead, by 1 s doubling up to a minute, logged once
and counted. Without that, one conversation whose fold kept failing re-armed
in the past for ever and the loop never yielded again.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Protocol

import anyio
import anyio.lowlevel
import structlog

from .._clock import Clock
from ._stats import RuntimeStats

__all__: list[str] = []

_log = structlog.get_logger("sessionvisor")


class _Timed(Protocol):
    timer_at: float | None

    def timer_fired(self, now: float) -> None: ...


_AT_ONCE = 3  # immediate re-runs of one entry in one pass before it is put off
_FIRST_DELAY = 1.0
_MAX_DELAY = 60.0


class Deadlines:
    def __init__(self, clock: Clock, stats: RuntimeStats | None = None) -> None:
        self._clock = clock
        self._stats = stats
        # Entries put off after a failed step: id -> (the entry, its next delay). The
        # entry is held so that its id cannot be reused while it is here.
        self._put_off: dict[int, tuple[_Timed, float]] = {}
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
            # How often each entry asked to run again at once in this pass: twice is
            # progress (a fold, then the inactivity stop that was due too), more is a
            # step that keeps failing.
            again_at_once: dict[int, int] = {}
            while heap and heap[0][0] <= now:
                at, _, item = heapq.heappop(heap)
                if item.timer_at != at:
                    continue  # superseded by an earlier entry
                item.timer_at = None
                try:
                    item.timer_fired(now)
                except Exception:  # one session's timer must not stop everyone's
                    self._count()
                    _log.exception("session_timer_failed")
                again = item.timer_at
                if again is not None and again <= now:
                    times = again_at_once[id(item)] = again_at_once.get(id(item), 0) + 1
                    if times > _AT_ONCE:
                        self._back_off(item, now)
                else:
                    self._put_off.pop(id(item), None)
            await anyio.lowlevel.checkpoint()

    def _back_off(self, item: _Timed, now: float) -> None:
        """Put off an entry that asked to run again at once."""
        known = self._put_off.get(id(item))
        delay = _FIRST_DELAY if known is None else known[1]
        if known is None:
            _log.warning(
                "session_timer_put_off",
                conversation_id=getattr(item, "conversation_id", None),
                delay=delay,
            )
        self._put_off[id(item)] = (item, min(delay * 2, _MAX_DELAY))
        self._count()
        deadline = now + delay
        item.timer_at = deadline
        heapq.heappush(self._heap, (deadline, next(self._counter), item))

    def _count(self) -> None:
        if self._stats is not None:
            self._stats.background_failures["timer"] += 1
