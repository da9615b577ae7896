from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import anyio.lowlevel

__all__ = ["ManualClock"]


class ManualClock:
    """A clock that moves only when told: ``advance(seconds)`` wakes due sleepers."""

    def __init__(self, start: float = 0.0, *, wall: datetime | None = None) -> None:
        self._now = float(start)
        self._start = self._now
        # The wall-clock time at ``start`` (durable timers are due at wall-clock times).
        self._wall = datetime.now(UTC) if wall is None else wall
        self._sleepers: list[tuple[float, anyio.Event]] = []
        # Created on first use, so a clock can be made outside an event loop.
        self._new_sleeper: anyio.Event | None = None

    def now(self) -> float:
        return self._now

    def wall(self) -> datetime:
        """The wall-clock time (aware UTC): moves with ``advance`` like ``now``."""
        return self._wall + timedelta(seconds=self._now - self._start)

    async def sleep_until(self, deadline: float) -> None:
        if self._now >= deadline:
            await anyio.lowlevel.checkpoint()
            return
        entry = (deadline, anyio.Event())
        self._sleepers.append(entry)
        if self._new_sleeper is not None:
            self._new_sleeper.set()
            self._new_sleeper = None
        try:
            await entry[1].wait()
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has come."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        due = [entry for entry in self._sleepers if entry[0] <= self._now]
        for entry in due:
            self._sleepers.remove(entry)
            entry[1].set()

    @property
    def sleepers(self) -> int:
        """How many tasks sleep on this clock (useful to wait until a timer is armed)."""
        return len(self._sleepers)

    async def wait_for_sleepers(self, count: int = 1, *, timeout: float = 5.0) -> None:
        """Return once at least ``count`` tasks sleep on this clock.

        Use it to wait until a timer, a backoff or a slow save is armed before
        calling ``advance``; it is woken by each new sleeper and never polls.

        Raises:
            TimeoutError: fewer than ``count`` tasks slept on the clock after
                ``timeout`` real seconds.
        """
        with anyio.fail_after(timeout):
            while len(self._sleepers) < count:
                if self._new_sleeper is None:
                    self._new_sleeper = anyio.Event()
                await self._new_sleeper.wait()
