"""The runtime of one process: the default mode of a ``SessionSupervisor``.

Its parts are the local ones; its store is the supervisor's, unwrapped; opening
it starts the recovery of the conversations a crashed process left with
unanswered work (``_recovery``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ._bus import LocalBus
from ._quotas import install_quotas
from ._recovery import recover_unanswered
from ._registry import LocalRegistry

if TYPE_CHECKING:
    import anyio.abc

    from ..state import StateStore
    from ._mailbox import LocalMailbox
    from ._seams import Bus, Mailbox, Registry
    from ._stats import ClusterMetrics, RuntimeStats

__all__: list[str] = ["LOCAL", "LocalRuntime"]


class LocalRuntime:
    """Implements ``Runtime`` for one process."""

    __slots__ = ("_bus", "_registry", "_store")

    def __init__(self, *, store: StateStore, stats: RuntimeStats) -> None:
        self._store = store
        self._registry = LocalRegistry()
        self._bus = LocalBus(stats)

    @property
    def store(self) -> StateStore:
        return self._store

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def bus(self) -> Bus:
        return self._bus

    def mailbox(self, local: LocalMailbox) -> Mailbox:
        return install_quotas(local, local)

    async def open(
        self,
        tasks: anyio.abc.TaskGroup,
        *,
        recover: Callable[[str], Awaitable[bool]] | None,
    ) -> None:
        if recover is not None:
            tasks.start_soon(recover_unanswered, self._store, recover)

    def begin_drain(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def metrics(self) -> ClusterMetrics | None:
        return None


class _LocalProvider:
    """Builds a ``LocalRuntime`` (the supervisor's default ``RuntimeProvider``)."""

    def build_runtime(self, *, store: StateStore, stats: RuntimeStats) -> LocalRuntime:
        return LocalRuntime(store=store, stats=stats)


LOCAL = _LocalProvider()
