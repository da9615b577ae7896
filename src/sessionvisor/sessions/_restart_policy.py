"""The restart policy: a pure function of past restart times, now and the options.

Restarts are counted as OTP counts them: the restart that would make more than
``max_restarts`` within ``max_seconds`` is not made, and ``temporary`` never
restarts. Keeping it pure makes every edge of the window testable without a clock.
"""

from __future__ import annotations

import attrs

from .._options import SupervisorOpts

__all__: list[str] = ["RestartDecision", "decide_restart"]


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
