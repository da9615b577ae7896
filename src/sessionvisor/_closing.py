"""``ClosedOnExit``: ``async with`` closes the object, for everything that holds resources.

Shared by the stores and the cluster's connections; it imports nothing of them.
"""

from __future__ import annotations

from types import TracebackType

__all__ = ["ClosedOnExit"]


class ClosedOnExit:
    """A base whose ``async with`` block ends with ``await self.aclose()``."""

    __slots__ = ()

    async def aclose(self) -> None:
        """Release what the object holds. Idempotent."""
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
