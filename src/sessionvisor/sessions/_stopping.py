"""The life of one actor as one explicit state; stopping it on request, on drain,
and by itself when idle.

An actor is ``SERVING`` from the moment it is built. A stop request (a user's
``stop``, a drain, an idle deadline, a write refused as stale) moves it to
``STOPPING``; it is ``STOPPED`` once its final save landed and the registry
forgot it. A crash that the restart policy refuses moves it to ``FAILED``. The
two last states are final::

    SERVING --request_stop(reason)--> STOPPING --finish()--> STOPPED
    SERVING/STOPPING --fail(error)--> FAILED
    SERVING --finish() (idle stop, after its save)--> STOPPED

Calls are accepted only while ``SERVING``. Waiting for the end is one event,
made only when somebody waits (an idle session must not carry one).

Every stop persists first (queued messages not held are saved as ``queued``
so the next wake runs them; a superseded session writes nothing more), then
emits one ``Shutdown`` and leaves the registry. A drain lets a running turn
finish within ``shutdown_timeout`` before cancelling it; an idle stop gives up
when anything happened while it saved.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import anyio

from .._clock import utcnow
from ._events import Shutdown, Status, describe

if TYPE_CHECKING:
    from ._actor import Actor

__all__: list[str] = [
    "ActorLife",
    "Life",
    "StopReason",
    "drain",
    "emit_shutdown",
    "finish_stop",
    "idle_stop",
    "stop_session",
]


class StopReason(enum.StrEnum):
    """Why a session stopped, as ``Shutdown.reason`` and the logs say it."""

    STOPPED = "stopped"
    DRAIN = "drain"
    INACTIVITY = "inactivity"
    NO_VIEWERS = "no_viewers"
    SUPERSEDED = "superseded"
    FAILED = "failed"


class Life(enum.Enum):
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class ActorLife:
    """The lifecycle state of one actor; see the module docstring for the transitions.

    Its fields change only through its own methods.
    """

    __slots__ = ("_ended", "error", "reason", "state")

    def __init__(self) -> None:
        self.state = Life.SERVING
        self.reason: StopReason | None = None
        self.error: BaseException | None = None
        self._ended: anyio.Event | None = None

    @property
    def ended(self) -> bool:
        return self.state is Life.STOPPED or self.state is Life.FAILED

    @property
    def superseded(self) -> bool:
        return self.reason is StopReason.SUPERSEDED

    def request_stop(self, reason: StopReason) -> None:
        if self.ended:
            return
        self.state = Life.STOPPING
        # A stale write is final: no later request may turn it into a plain stop
        # (that would save again over the new owner's data).
        if self.reason is not StopReason.SUPERSEDED:
            self.reason = reason

    def supersede(self) -> None:
        """A stale write found after the stop began: the stop ends as ``superseded``."""
        self.reason = StopReason.SUPERSEDED

    def finish(self, reason: StopReason | None = None) -> None:
        if reason is not None and self.reason is None:
            self.reason = reason
        self.state = Life.STOPPED
        self._set_ended()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.reason = StopReason.FAILED
        self.state = Life.FAILED
        self._set_ended()

    def _set_ended(self) -> None:
        if self._ended is None:
            self._ended = anyio.Event()
        self._ended.set()

    async def wait_ended(self) -> None:
        if self.state is Life.SERVING:
            return
        if self._ended is None:
            self._ended = anyio.Event()
        await self._ended.wait()


async def stop_session(actor: Actor, reason: StopReason, *, grace: bool = True) -> None:
    """Persist and stop; a running turn is cancelled (on drain: after shutdown_timeout,
    unless ``grace`` is False)."""
    if not actor.closed:
        actor.request_stop(reason)
    life = actor.life
    if reason is StopReason.DRAIN and grace and not life.ended:
        clock = actor.host.clock
        with anyio.CancelScope() as timer_scope:
            async with anyio.create_task_group() as tg:

                async def expire() -> None:
                    await clock.sleep_until(clock.now() + actor.opts.shutdown_timeout)
                    timer_scope.cancel()

                tg.start_soon(expire)
                await life.wait_ended()
                tg.cancel_scope.cancel()
    if not life.ended:
        # The turn had its shutdown_timeout (or gets none): cancel it so the drain can
        # finish; its messages go back to the queue, answered on the next wake.
        actor.cancel_turn()
    await life.wait_ended()


async def idle_stop(actor: Actor, reason: StopReason) -> bool:
    """Stop for inactivity or no viewers unless something happened meanwhile."""
    gen = actor.mark_changed()  # the shutdown save carries last_seq even when nothing else did
    if not await actor.persist("shutdown", reserve=1):
        actor.touch()  # try again after another full timeout, not in a tight loop
        return False
    if actor.changes != gen or actor.closed or actor.queue_ready:
        return False  # work arrived while saving: keep serving
    actor.mark_stopping(reason)
    emit_shutdown(actor, reason)
    actor.end()
    return True


def emit_shutdown(actor: Actor, reason: StopReason) -> None:
    folded = actor.folded
    interrupt = (
        folded.peek_interrupt() if not folded.folded or actor.status is Status.INTERRUPTED else None
    )
    restorable = False
    if interrupt is not None:
        hook = getattr(actor.agent, "restorable", None)
        try:
            restorable = True if hook is None else bool(hook(interrupt))
        except Exception as exc:  # the agent's hook must not break a stop
            actor.log().warning("restorable_hook_failed", error=describe(exc))
            restorable = False
    actor.emit(
        Shutdown,
        reason=str(reason),
        status=actor.status,
        interrupt_restorable=restorable,
        last_activity_at=actor.last_activity_at(),
        shutdown_at=utcnow(),
    )
    actor.log().info("session_shutdown", reason=str(reason), status=actor.status.value)


async def finish_stop(actor: Actor) -> None:
    reason = actor.life.reason or StopReason.STOPPED
    if reason is not StopReason.SUPERSEDED:
        actor.mark_changed()
        # Messages still waiting (not held) are saved as `queued` so that the next
        # wake runs them; held ones stay held.
        pending = actor.folded.has_unheld_queue() and not actor.held
        await actor.persist("queued" if pending else "shutdown", reserve=1)
    emit_shutdown(actor, reason)
    actor.end()


_DRAINERS = 64  # sessions stopped at once while draining


async def drain(actors: list[Actor], *, grace: bool = True) -> None:
    """Stop every actor for a drain: running turns get ``shutdown_timeout`` (none
    without ``grace``), all persist.

    A bounded crew of drainers, not a task per session: a supervisor holding
    100,000 parked sessions must not need 100,000 tasks (and their memory) to
    stop. Busy sessions go first, so their turns start their shutdown_timeout
    at once.
    """
    ordered = sorted(actors, key=lambda a: not a.busy)
    pending = iter(ordered)

    async def drainer() -> None:
        for actor in pending:
            await actor.stop(StopReason.DRAIN, grace=grace)

    async with anyio.create_task_group() as tg:
        for _ in range(min(_DRAINERS, len(ordered))):
            tg.start_soon(drainer)
