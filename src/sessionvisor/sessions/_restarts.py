"""Restarts: the policy, a pure function of past restart times, now and the options;
and carrying a restart out.

Restarts are counted as OTP counts them: the restart that would make more than
``max_restarts`` within ``max_seconds`` is not made, and ``temporary`` never
restarts. Keeping the decision pure makes every edge of the window testable
without a clock. A restart made consults router and factory again and reloads
the State from the store (``ActorHost.rebuild``), never from the crashed copy;
the queue survives it. When the policy refuses, the session gives up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import attrs

from .._options import SupervisorOpts
from ._events import Restarted, SessionFailed, Status
from ._turns import describe

if TYPE_CHECKING:
    from ..state import State
    from ._actor import Actor
    from ._host import Rebuilt

__all__: list[str] = ["RestartDecision", "decide_restart", "give_up", "restart_by_policy"]


@attrs.frozen
class RestartDecision:
    """``give_up``, or restart as ``attempt`` (1-based within the window) after ``delay``."""

    give_up: bool
    attempt: int = 0
    delay: float = 0.0
    times: tuple[float, ...] = ()


def decide_restart(times: tuple[float, ...], now: float, opts: SupervisorOpts) -> RestartDecision:
    """Decide what to do about a crash at ``now``, given the earlier restart times."""
    window = tuple(t for t in times if now - t <= opts.max_seconds)
    if opts.restart == "temporary" or len(window) >= opts.max_restarts:
        return RestartDecision(give_up=True, times=window)
    attempt = len(window) + 1
    delay = opts.restart_backoff * 2 ** (attempt - 1) if opts.restart_backoff > 0 else 0.0
    return RestartDecision(give_up=False, attempt=attempt, delay=delay, times=(*window, now))


async def restart_by_policy(actor: Actor, error: BaseException) -> bool:
    """Restart by policy; return False when the session gave up."""
    restarting = actor.restarting = anyio.Event()
    try:
        return await _restart_loop(actor, error)
    finally:
        actor.restarting = None
        restarting.set()


async def _restart_loop(actor: Actor, error: BaseException) -> bool:
    clock = actor.host.clock
    while True:
        now = clock.now()
        decision = decide_restart(actor.restart_times, now, actor.opts)
        if decision.give_up:
            give_up(actor, error)
            return False
        actor.restart_times = decision.times
        actor.restarts += 1
        actor.host.stats.restarts += 1
        attempt = decision.attempt
        actor.log().warning("session_restarting", attempt=attempt, error=describe(error))
        if decision.delay > 0:
            await clock.sleep_until(now + decision.delay)
        if actor.life.reason is not None:
            return True  # stopped while waiting: the worker finishes the stop
        try:
            rebuilt = await actor.host.rebuild(actor)
        except Exception as exc:
            # The restart was made and crashed again (an on_start hook that keeps
            # raising): subscribers are told of it too, not only of the last one.
            actor.emit(Restarted, attempt=attempt, error=describe(error))
            error = exc
            continue
        _adopt_rebuilt(actor, rebuilt)
        actor.queue.held = actor.state.interrupt is not None  # queued messages run next
        actor.emit(Restarted, attempt=attempt, error=describe(error))
        actor.status = Status.RUNNING  # so the next line announces the settled status
        actor.set_status(Status.INTERRUPTED if actor.state.interrupt else Status.IDLE)
        actor.log().info("session_restarted", attempt=attempt)
        return True


def _adopt_rebuilt(actor: Actor, rebuilt: Rebuilt) -> None:
    state: State = rebuilt.state
    # The mailbox survives the crash: queued messages the store has not seen come
    # along. Computed after the host's last await, so a send that raced the restart
    # counts.
    known = {m.id for m in state.queued}
    known.update(m.id for m in state.messages)
    carried = [m for m in actor.state.queued if m.id not in known]
    state.queued.extend(carried)
    actor.agent = rebuilt.agent
    actor.opts = rebuilt.opts
    actor.extra = rebuilt.extra
    actor.state = state
    actor.writer.reset(rebuilt.version)
    if carried:
        actor.writer.changed()


def give_up(actor: Actor, error: BaseException) -> None:
    actor.host.stats.give_ups += 1
    actor.life.fail(error)
    actor.status = Status.NOT_RUNNING
    actor.emit(SessionFailed, error=describe(error))
    actor.log().error("session_failed", error=describe(error), restarts=actor.restarts)
    actor.turn.release_waiters()
    actor.host.forget(actor)
