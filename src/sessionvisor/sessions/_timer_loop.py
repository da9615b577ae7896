"""The task that fires durable timers, and handing a fired timer to its session.

One loop per supervisor. It asks the store for the timers due now (through
the store's index on the due time, at most ``_BATCH`` at a time), fires each
one, and sleeps until the next due time the store reports, or until a
``schedule`` brings an earlier one (``poke``). With no timer stored it
sleeps until poked, so an idle supervisor holds no sleeper on its clock. A
cluster node also polls (``poll``): other nodes schedule timers it must see.

Firing a timer (the supervisor's ``fire``) queues its turn on the session and
then removes the row, only if it still holds that scheduling (``drop_timer``
with the id): a crash in between fires it again, and the session recognises
the turn it already holds by the message id, so the timer runs once.

Nothing spins on a failing store: a failing pass is retried after 1 s,
doubling up to 30 s; a timer whose firing fails is put off the same way on
its own while the others go on; a timer owned by another node is looked at
again after the poll interval.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel
import structlog

from .._clock import Clock, utcnow
from ..state import StoredTimer
from ._intake import _stored_before_acknowledged, accepted, check_not_superseded, check_saved
from ._timer_turns import timer_message

if TYPE_CHECKING:
    from ._actor import Actor

__all__: list[str] = ["Fired", "TimerLoop", "deliver_timer", "wall_now"]

_log = structlog.get_logger("sessionvisor")

Fired = Literal["fired", "elsewhere", "gone"]
Fire = Callable[[str, StoredTimer], Awaitable[Fired]]

_BATCH = 256  # timers read per pass
_AT_ONCE = 64  # timers fired concurrently
_FIRST_DELAY = 1.0
_MAX_DELAY = 30.0
_RECHECK = 60.0  # the longest sleep while a timer is stored (the wall clock may jump)


def wall_now(clock: Clock) -> datetime:
    """The wall-clock time on ``clock``: its ``wall()`` when it has one (a test's
    ``ManualClock``), else the system's UTC time."""
    wall = getattr(clock, "wall", None)
    found: datetime = utcnow() if wall is None else wall()
    return found


class TimerLoop:
    """Fires the durable timers of one supervisor (module docstring)."""

    def __init__(self, clock: Clock, store: Any, *, poll: float | None = None) -> None:
        self._clock = clock
        self._store = store
        self._poll = poll
        self._wake = anyio.Event()
        self._target: datetime | None = None  # the due time the loop sleeps toward
        self._running = False
        # Timers put off after a failed or refused firing: (cid, key, id) -> (at, delay).
        self._put_off: dict[tuple[str, str, str], tuple[float, float]] = {}
        self.fired = 0  # timers whose turn this loop queued

    def poke(self, due: datetime) -> None:
        """A timer due at ``due`` was scheduled: wake the loop if that is sooner."""
        if self._running and (self._target is None or due < self._target):
            self._target = due
            self._wake.set()

    async def run(self, fire: Fire) -> None:
        self._running = True
        failures = 0
        while True:
            try:
                deadline = await self._pass(fire)
                failures = 0
            except Exception as exc:
                failures += 1
                delay = min(_FIRST_DELAY * 2 ** (failures - 1), _MAX_DELAY)
                if failures == 1 or delay == _MAX_DELAY:
                    _log.warning(
                        "timers_pass_failed",
                        error=f"{type(exc).__name__}: {exc}",
                        retry_in=delay,
                        failures=failures,
                    )
                deadline = self._clock.now() + delay
                self._target = None
            await self._sleep(deadline)

    async def _pass(self, fire: Fire) -> float | None:
        """Fire what is due; return the clock time to look again at (None: when poked)."""
        store = self._store
        self._target = None  # a timer scheduled during the pass wakes the next sleep
        while True:
            now = wall_now(self._clock)
            due = await store.due_timers(now, _BATCH)
            ready = [(cid, t) for cid, t in due if not self._waiting(cid, t)]
            if ready:
                await self._fire_all(fire, ready)
            if len(due) < _BATCH or not ready:
                break
        next_due: datetime | None = await store.next_timer_due()
        clock_now = self._clock.now()
        deadlines: list[float] = []
        if self._poll is not None:
            deadlines.append(clock_now + self._poll)
        if next_due is not None:
            ahead = (next_due - wall_now(self._clock)).total_seconds()
            if ahead > 0:
                deadlines.append(clock_now + min(ahead, _RECHECK))
            else:
                # Due but put off (look again when the first one's wait ends), or due
                # since the pass read them (look again now).
                later = [at for at, _ in self._put_off.values() if at > clock_now]
                deadlines.append(min(later) if later else clock_now)
        if self._put_off:
            # Forget the entries of timers fired (or dropped) since they were put off.
            stale = clock_now - 2 * _MAX_DELAY
            self._put_off = {k: v for k, v in self._put_off.items() if v[0] > stale}
        if not self._wake.is_set():
            self._target = next_due
        return min(deadlines) if deadlines else None

    def _waiting(self, cid: str, timer: StoredTimer) -> bool:
        entry = self._put_off.get((cid, timer.key, timer.id))
        return entry is not None and entry[0] > self._clock.now()

    async def _fire_all(self, fire: Fire, ready: list[tuple[str, StoredTimer]]) -> None:
        pending = iter(ready)

        async def worker() -> None:
            for cid, timer in pending:
                await self._fire_one(fire, cid, timer)

        async with anyio.create_task_group() as tg:
            for _ in range(min(_AT_ONCE, len(ready))):
                tg.start_soon(worker)

    async def _fire_one(self, fire: Fire, cid: str, timer: StoredTimer) -> None:
        name = (cid, timer.key, timer.id)
        try:
            outcome = await fire(cid, timer)
        except Exception as exc:
            _, last = self._put_off.get(name, (0.0, 0.0))
            delay = min(max(last * 2, _FIRST_DELAY), _MAX_DELAY)
            self._put_off[name] = (self._clock.now() + delay, delay)
            _log.warning(
                "timer_fire_failed",
                conversation_id=cid,
                key=timer.key,
                error=f"{type(exc).__name__}: {exc}",
                retry_in=delay,
            )
            return
        if outcome == "elsewhere":
            # Another node owns the conversation and fires it; look again later in case
            # it dies first.
            self._put_off[name] = (self._clock.now() + (self._poll or _FIRST_DELAY), 0.0)
            return
        self._put_off.pop(name, None)
        if outcome == "fired":
            self.fired += 1

    async def _sleep(self, deadline: float | None) -> None:
        wake = self._wake
        if wake.is_set():
            wake = self._wake = anyio.Event()
            await anyio.lowlevel.checkpoint()
            return
        async with anyio.create_task_group() as tg:
            if deadline is not None:

                async def alarm() -> None:
                    await self._clock.sleep_until(deadline)
                    tg.cancel_scope.cancel()

                tg.start_soon(alarm)
            await wake.wait()
            tg.cancel_scope.cancel()
        if wake.is_set():
            self._wake = anyio.Event()


async def deliver_timer(actor: Actor, timer: StoredTimer) -> None:
    """Queue the timer's turn on the live session and return once it is stored.

    Like a client's message: it runs after the running turn, in order with the
    messages around it, lifts a held queue, and talks past a pending question.
    A turn the session already holds (a second firing) is not queued again.

    Raises:
        StoreUnavailable, NotRunning, QueueFull: not stored; the loop retries.
    """
    message = timer_message(timer)
    actor.check_open()
    if accepted(actor.state, message.id) is not None:
        await _stored_before_acknowledged(actor)
        return
    queued = actor.queue_user_message(message, None)
    if queued:
        saved = await actor.persist(actor.mid_work_lifecycle)
    else:
        saved = await actor.persist("turn_start")
        actor.hand_over_begun_turn()
    check_not_superseded(actor)
    check_saved(actor, saved, what="the timer's turn")
