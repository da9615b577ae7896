"""When an idle session should act by itself: stop for inactivity, stop when its
last viewer left, or fold its State.

A pure function of the session's situation, so the rules are in one place and
testable without a clock; the shared timer (``_timers.Deadlines``) asks it
again whenever an entry comes due.
"""

from __future__ import annotations

import enum

from .._options import SupervisorOpts

__all__: list[str] = ["IdleAction", "next_idle_action"]


class IdleAction(enum.StrEnum):
    HIBERNATE = "hibernate"
    NO_VIEWERS = "no_viewers"
    INACTIVITY = "inactivity"


def next_idle_action(
    *,
    opts: SupervisorOpts,
    last_activity: float,
    viewers: int,
    viewers_left_at: float | None,
    can_fold: bool,
) -> tuple[float, IdleAction] | None:
    """The earliest (deadline, action) for an idle session, or None when there is none.

    ``can_fold`` is True when the State is unfolded and nobody subscribes.
    """
    candidates: list[tuple[float, IdleAction]] = []
    fold = opts.hibernate_after
    if viewers:
        # A viewed session never stops by itself; it may still fold.
        if fold is not None and can_fold:
            candidates.append((last_activity + fold, IdleAction.HIBERNATE))
        return min(candidates) if candidates else None
    # A viewer leaving counts as activity: a tab that watched for an hour and
    # reloads gets viewer_grace, not an instant inactivity stop.
    start = last_activity
    if viewers_left_at is not None:
        start = max(start, viewers_left_at)
        candidates.append((start + opts.viewer_grace, IdleAction.NO_VIEWERS))
    if opts.inactivity_timeout is not None:
        candidates.append((start + opts.inactivity_timeout, IdleAction.INACTIVITY))
    if fold is not None and can_fold:
        candidates.append((start + fold, IdleAction.HIBERNATE))
    return min(candidates) if candidates else None
