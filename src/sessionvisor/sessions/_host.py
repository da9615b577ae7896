"""What an actor needs from the supervisor that hosts it: a narrow interface.

The actor never reaches into the supervisor, and the supervisor drives the
actor only through its public methods. Everything that crosses the line is
listed here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from .._options import SupervisorOpts
from ..state import State
from ._quotas import NO_QUOTAS, Quotas
from ._stats import RuntimeStats

if TYPE_CHECKING:
    from .._clock import Clock
    from ..state import StateStore
    from ._actor import Actor
    from ._runners import Runners
    from ._seams import Bus, Registry
    from ._timer_loop import TimerLoop
    from ._timers import Deadlines

__all__: list[str] = ["ActorHost", "LocalHost", "Rebuilt"]


@attrs.frozen
class Rebuilt:
    """A crashed actor's parts, made again from router, factory and store."""

    agent: Any
    opts: SupervisorOpts
    extra: Any
    state: State
    version: int | None


class ActorHost(Protocol):
    """The supervisor, as its actors see it."""

    @property
    def clock(self) -> Clock: ...

    @property
    def store(self) -> StateStore: ...

    @property
    def stats(self) -> RuntimeStats:
        """The supervisor's counters."""
        ...

    #: The supervisor's durable-timer loop (``_timer_loop``), once it is built.
    timers: TimerLoop | None

    def spawn(self, work: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``work`` on the supervisor's bounded pool of tasks."""
        ...

    def schedule(self, actor: Actor, deadline: float) -> None:
        """Have ``actor.timer_fired`` called no later than ``deadline``."""
        ...

    def viewer_count(self, conversation_id: str) -> int: ...

    #: The owners' quotas (``_quotas``): running turns and messages per minute.
    quotas: Quotas

    def forget(self, actor: Actor) -> None:
        """The actor ended: drop it from the registry."""
        ...

    async def rebuild(self, actor: Actor) -> Rebuilt:
        """Consult router and factory again and reload the State from the store."""
        ...


class LocalHost:
    """``ActorHost`` for one process: the supervisor's pool, timer, registry and bus."""

    __slots__ = (
        "_bus",
        "_clock",
        "_deadlines",
        "_registry",
        "_stats",
        "_store",
        "quotas",
        "rebuild_with",
        "runners",
        "timers",
    )

    def __init__(
        self,
        *,
        clock: Clock,
        store: StateStore,
        registry: Registry,
        bus: Bus,
        deadlines: Deadlines,
        stats: RuntimeStats,
    ) -> None:
        self._stats = stats
        self._clock = clock
        self._store = store
        self._registry = registry
        self._bus = bus
        self._deadlines = deadlines
        self.runners: Runners | None = None  # the supervisor's, once it is entered
        self.rebuild_with: Callable[[Actor], Awaitable[Rebuilt]] | None = None
        self.timers: TimerLoop | None = None  # the supervisor's (``Lifetime``)
        self.quotas: Quotas = NO_QUOTAS  # the runtime installs the supervisor's (_quotas)

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def store(self) -> StateStore:
        return self._store

    @property
    def stats(self) -> RuntimeStats:
        return self._stats

    def spawn(self, work: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        assert self.runners is not None, "sessions run only inside the supervisor"
        self.runners.submit(work)

    def schedule(self, actor: Actor, deadline: float) -> None:
        self._deadlines.schedule(actor, deadline)

    def viewer_count(self, conversation_id: str) -> int:
        return self._registry.viewer_count(conversation_id)

    def forget(self, actor: Actor) -> None:
        self._registry.forget(actor)
        self._bus.release(actor.conversation_id, self._registry.holds)

    async def rebuild(self, actor: Actor) -> Rebuilt:
        assert self.rebuild_with is not None
        return await self.rebuild_with(actor)
