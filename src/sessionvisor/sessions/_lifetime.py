"""Entering and leaving a supervisor: its task group, the runtime's open and
close, and the drain.

Entering starts the shared timer and opens the runtime (which starts the
recovery of unanswered work). Leaving drains: starts in flight finish, every
session persists and stops (running turns get ``shutdown_timeout``, unless the
supervisor is left because its scope was cancelled), subscriptions end, and
the runtime closes (a cluster gives up its leases).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
import structlog

from .._errors import RegistryUnavailable
from ._host import LocalHost
from ._runners import Runners
from ._stopping import drain
from ._timer_loop import Fire, TimerLoop
from ._timers import Deadlines

if TYPE_CHECKING:
    from .._clock import Clock
    from ._seams import Runtime
    from ._stats import RuntimeStats

__all__: list[str] = ["Lifetime", "Phase"]

_log = structlog.get_logger("sessionvisor")

Phase = Literal["new", "open", "draining", "closed"]
_WHY_CLOSED = {
    "new": "has not been entered (use `async with`)",
    "draining": "is draining",
    "closed": "is closed",
}


class Lifetime:
    """Where a supervisor is in its life, the steps between (module docstring),
    and the host its actors run on."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        clock: Clock,
        stats: RuntimeStats,
        recover: Callable[[str], Awaitable[bool]] | None,
    ) -> None:
        self._runtime = runtime
        self._deadlines = Deadlines(clock, stats)
        #: What the actors see of the supervisor (their timer, pool, store, ...).
        self.host = self._host = LocalHost(
            clock=clock,
            store=runtime.store,
            registry=runtime.registry,
            bus=runtime.bus,
            deadlines=self._deadlines,
            stats=stats,
        )
        self._recover = recover
        #: Fires the durable timers (``_timer_loop``); a cluster node also polls.
        self.timers = TimerLoop(clock, runtime.store, poll=getattr(runtime, "timer_poll", None))
        self._host.timers = self.timers
        self._tg: anyio.abc.TaskGroup | None = None
        self.phase: Phase = "new"

    def is_open(self) -> bool:
        return self.phase == "open"

    def check_open(self, conversation_id: str | None = None) -> None:
        """Raise ``RegistryUnavailable`` unless the supervisor is open."""
        if self.phase != "open":
            subject = "" if conversation_id is None else f"conversation {conversation_id!r}: "
            raise RegistryUnavailable(f"{subject}the session supervisor {_WHY_CLOSED[self.phase]}")

    async def enter(self, fire_timer: Fire | None = None) -> None:
        """Open; with ``fire_timer``, run the timer loop that calls it."""
        if self.phase != "new":
            raise RuntimeError("a SessionSupervisor can be entered only once")
        tg = self._tg = anyio.create_task_group()
        await tg.__aenter__()
        self._host.runners = Runners(tg)
        tg.start_soon(self._deadlines.run)
        try:
            await self._runtime.open(tg, recover=self._recover)
        except BaseException:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
            self.phase = "closed"
            raise
        self.phase = "open"
        if fire_timer is not None:
            tg.start_soon(self.timers.run, fire_timer)

    async def leave(self, exc_type: Any) -> None:
        tg = self._tg
        assert tg is not None
        # Left because the enclosing scope was cancelled (a deadline, a test's timeout):
        # whoever cancelled wants out now, so running turns get no shutdown_timeout
        # (with a hand-driven clock they would wait forever). They still hand their
        # messages back and every session persists.
        grace = not (
            isinstance(exc_type, type) and issubclass(exc_type, anyio.get_cancelled_exc_class())
        )
        self.phase = "draining"
        self._runtime.begin_drain()
        registry = self._runtime.registry
        log = _log.bind(sessions=len(registry.actors()))
        log.info("supervisor_draining")
        host = self._host
        runners = host.runners
        try:
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as drain_tg:
                    if not grace:
                        # The supervisor's own task group sits inside the cancelled scope:
                        # a task started there now (a stop's worker), or an idle runner
                        # handed work, is cancelled before it can run, and the drain
                        # would wait for it for ever. The drain's work runs here instead.
                        host.runners = Runners(drain_tg)
                    await registry.wait_starts()
                    await drain(registry.actors(), grace=grace)
                    self._runtime.bus.close_all()
                    await self._runtime.close()  # a cluster gives up its leases here
                    drain_tg.cancel_scope.cancel()  # the drain's idle runners
        finally:
            for pool in {runners, host.runners}:
                if pool is not None:
                    pool.cancel_all()  # a save retry waiting on a dead store
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
            self.phase = "closed"
            log.info("supervisor_drained")
