"""Stopping a session: on request, on drain, and by itself when idle.

Every stop persists first (queued messages not held are saved as ``queued``
so the next wake runs them; a superseded session writes nothing more), then
emits one ``Shutdown`` and leaves the registry. A drain lets a running turn
finish within ``shutdown_timeout`` before cancelling it; an idle stop gives up
when anything happened while it saved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from .._clock import utcnow
from ._events import Shutdown, Status
from ._lifecycle import StopReason
from ._turns import describe

if TYPE_CHECKING:
    from ._actor import Actor

__all__: list[str] = ["drain", "emit_shutdown", "finish_stop", "idle_stop", "stop_session"]


async def stop_session(actor: Actor, reason: StopReason, *, grace: bool = True) -> None:
    """Persist and stop; a running turn is cancelled (on drain: after shutdown_timeout,
    unless ``grace`` is False)."""
    if not actor.closed:
        actor.request_stop(reason)
    if reason is StopReason.DRAIN and grace and not actor.life.ended:
        clock = actor.host.clock
        with anyio.CancelScope() as timer_scope:
            async with anyio.create_task_group() as tg:

                async def expire() -> None:
                    await clock.sleep_until(clock.now() + actor.opts.shutdown_timeout)
                    timer_scope.cancel()

                tg.start_soon(expire)
                await actor.life.wait_ended()
                tg.cancel_scope.cancel()
    if not actor.life.ended:
        # The turn had its shutdown_timeout (or gets none): cancel it so the drain can
        # finish; its messages go back to the queue, answered on the next wake.
        actor.turn.cancel()
    await actor.life.wait_ended()


async def idle_stop(actor: Actor, reason: StopReason) -> bool:
    """Stop for inactivity or no viewers unless something happened meanwhile."""
    writer = actor.writer
    writer.changed()  # the shutdown save carries last_seq even when nothing else changed
    gen = writer.gen
    if not await actor.persist("shutdown", reserve=1):
        actor.touch()  # try again after another full timeout, not in a tight loop
        return False
    if writer.gen != gen or actor.closed or actor.queue.ready(actor.state):
        return False  # work arrived while saving: keep serving
    actor.life.request_stop(reason)
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
        actor.writer.changed()
        # Messages still waiting (not held) are saved as `queued` so that the next
        # wake runs them; held ones stay held.
        pending = actor.folded.has_unheld_queue() and not actor.queue.held
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
