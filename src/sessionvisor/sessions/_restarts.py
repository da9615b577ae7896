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

import attrs

from .._options import SupervisorOpts
from ._events import Restarted, describe

if TYPE_CHECKING:
    from ._actor import Actor

__all__: list[str] = ["RestartDecision", "decide_restart", "restart_by_policy"]


@attrs.frozen
class RestartDecision:
    """``give_up``, or restart as ``attempt`` (1-based within the window) after ``delay``."""

    give_up: bool
    attempt: int = 0
    delay: float = 0.0
    times: tuple[float, ...] = ()


def decide_restart(
    times: tuple[float, ...], *, now: float, opts: SupervisorOpts
) -> RestartDecision:
    """Decide what to do about a crash at ``now``, given the earlier restart times."""
    window = tuple(t for t in times if now - t <= opts.max_seconds)
    if opts.restart == "temporary" or len(window) >= opts.max_restarts:
        return RestartDecision(give_up=True, times=window)
    attempt = len(window) + 1
    delay = opts.restart_backoff * 2 ** (attempt - 1) if opts.restart_backoff > 0 else 0.0
    return RestartDecision(give_up=False, attempt=attempt, delay=delay, times=(*window, now))


async def restart_by_policy(actor: Actor, error: BaseException) -> bool:
    """Restart by policy; return False when the session gave up."""
    restarting = actor.begin_restart()
    try:
        return await _restart_loop(actor, error)
    finally:
        actor.end_restart(restarting)


async def _restart_loop(actor: Actor, error: BaseException) -> bool:
    clock = actor.host.clock
    while True:
        now = clock.now()
        decision = decide_restart(actor.restart_times, now=now, opts=actor.opts)
        if decision.give_up:
            actor.give_up(error)
            return False
        actor.count_restart(decision.times)
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
        # The mailbox survives the crash (queued messages come along), the queue
        # runs next unless an interrupt holds it; subscribers hear of the restart
        # and then of the settled status.
        actor.adopt_rebuilt(rebuilt, attempt=attempt, error=describe(error))
        actor.log().info("session_restarted", attempt=attempt)
        return True
