from __future__ import annotations

import anyio
import anyio.lowlevel

__all__ = ["ManualClock"]


class ManualClock:
    """A clock that moves only when told: ``advance(seconds)`` wakes due sleepers."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if self._now >= deadline:
            await anyio.lowlevel.checkpoint()
            return
        entry = (deadline, anyio.Event())
        self._sleepers.append(entry)
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
