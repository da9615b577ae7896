"""What an actor needs from the supervisor that hosts it: a narrow interface.

The actor never reaches into the supervisor, and the supervisor drives the
actor only through its public methods. Everything that crosses the line is
listed here.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from .._options import SupervisorOpts
from ..state import State

if TYPE_CHECKING:
    from .._clock import Clock
    from ..state import StateStore
    from ._actor import Actor

__all__: list[str] = ["ActorHost", "Rebuilt"]


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

    def spawn(self, work: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``work`` on the supervisor's bounded pool of tasks."""
        ...

    def schedule(self, actor: Actor, deadline: float) -> None:
        """Have ``actor.timer_fired`` called no later than ``deadline``."""
        ...

    def viewer_count(self, conversation_id: str) -> int: ...

    def forget(self, actor: Actor) -> None:
        """The actor ended: drop it from the registry."""
        ...

    async def rebuild(self, actor: Actor) -> Rebuilt:
        """Consult router and factory again and reload the State from the store."""
        ...
