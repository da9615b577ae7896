from __future__ import annotations

from typing import Any

from .._clock import Clock
from ..state import Lifecycle, StateStore, StoredConversation

__all__ = ["FlakyStore", "StoreUnavailable"]


class StoreUnavailable(ConnectionError):
    """Raised by ``FlakyStore`` while it pretends the store is down."""


class FlakyStore:
    """Wraps a store; saves and loads can be made to fail or to take time.

    ``fail_saves = True`` (or a count) makes saves raise ``StoreUnavailable``;
    ``fail_loads`` likewise for loads; ``save_delay`` sleeps on ``clock`` (or
    anyio) before each save. ``saves`` records ``(conversation_id, lifecycle)``.
    Any other attribute (``unanswered``, ``aclose``, ...) is the inner store's,
    so ``getattr(flaky, "unanswered", None)`` finds it exactly when the inner
    store has it.
    """

    def __init__(self, inner: StateStore, *, clock: Clock | None = None) -> None:
        self.inner = inner
        self.clock = clock
        self.fail_saves: bool | int = False
        self.fail_loads: bool | int = False
        self.save_delay = 0.0
        self.saves: list[tuple[str, str]] = []
        self.failed_saves = 0

    def _should_fail(self, flag: bool | int) -> tuple[bool, bool | int]:
        if flag is True:
            return True, True
        if isinstance(flag, int) and not isinstance(flag, bool) and flag > 0:
            return True, flag - 1
        return False, flag

    def heal(self) -> None:
        """Stop injecting failures."""
        self.fail_saves = False
        self.fail_loads = False

    async def load(self, conversation_id: str) -> StoredConversation | None:
        fail, self.fail_loads = self._should_fail(self.fail_loads)
        if fail:
            raise StoreUnavailable(f"store down (load of {conversation_id!r})")
        return await self.inner.load(conversation_id)

    async def save(
        self,
        conversation_id: str,
        record: StoredConversation,
        *,
        expected_version: int | None,
        lifecycle: Lifecycle,
    ) -> int:
        if self.save_delay:
            import anyio

            if self.clock is not None:
                await self.clock.sleep_until(self.clock.now() + self.save_delay)
            else:
                await anyio.sleep(self.save_delay)
        fail, self.fail_saves = self._should_fail(self.fail_saves)
        if fail:
            self.failed_saves += 1
            raise StoreUnavailable(f"store down (save of {conversation_id!r})")
        version = await self.inner.save(
            conversation_id, record, expected_version=expected_version, lifecycle=lifecycle
        )
        self.saves.append((conversation_id, lifecycle))
        return version

    async def delete(self, conversation_id: str) -> None:
        await self.inner.delete(conversation_id)

    async def quarantine(self, conversation_id: str) -> str:
        return await self.inner.quarantine(conversation_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
