"""When an idle session should act by itself: stop for inactivity, stop when its
last viewer left, or fold its State.

A pure function of the session's situation, so the rules are in one place and
testable without a clock; the shared timer (``_timers.Deadlines``) asks it
again whenever an entry comes due.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from .._options import SupervisorOpts
from ._events import Status, describe
from ._stopping import StopReason

if TYPE_CHECKING:
    from ._actor import Actor

__all__: list[str] = ["IdleAction", "arm", "next_idle_action", "timer_fired"]


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


def _due(actor: Actor) -> tuple[float, IdleAction] | None:
    if actor.busy or actor.closed or actor.status is Status.RUNNING:
        return None
    return next_idle_action(
        opts=actor.opts,
        last_activity=actor.last_activity,
        viewers=actor.host.viewer_count(actor.conversation_id),
        viewers_left_at=actor.viewers_left_at,
        can_fold=actor.folded.can_fold(actor.changes) and not actor.topic.subscribers,
    )


def arm(actor: Actor) -> None:
    due = _due(actor)
    if due is not None:
        actor.host.schedule(actor, due[0])


def timer_fired(actor: Actor, now: float) -> None:
    due = _due(actor)
    if due is None:
        return
    deadline, action = due
    if deadline > now:
        actor.host.schedule(actor, deadline)
        return
    if action is IdleAction.HIBERNATE:
        _hibernate(actor)
        arm(actor)  # the inactivity deadline, if any, still stands
        return
    actor.claim_worker(idle_reason=StopReason(str(action)))


def _hibernate(actor: Actor) -> None:
    if actor.folded.folded or actor.busy or actor.closed or actor.topic.subscribers:
        return
    try:
        actor.fold_state()
    except Exception as error:
        # Not tried again until the State changes (arm() then skips the fold): retrying
        # the same dump at once is what made the timer spin.
        actor.host.stats.background_failures["fold"] += 1
        actor.log().warning("hibernate_refused", error=describe(error)[:500])
