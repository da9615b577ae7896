"""Time for the runtime, injectable so tests of timeouts do not sleep."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "SystemClock", "utcnow"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic seconds and a way to sleep until one of them."""

    def now(self) -> float:
        """Return the current monotonic time in seconds."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline``."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and anyio's sleep."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            await anyio.sleep(delay)


def utcnow() -> datetime:
    """Return the current wall-clock time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)
