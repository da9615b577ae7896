"""The task that fires durable timers, and handing a fired timer to its session.

One loop per supervisor, three kinds of task:

- the reader asks the store for the timers due now (through the store's
  index on the due time) and hands each one to a firer; it reads on while
  they fire. Then it sleeps until the next due time the store reports, or
  until a ``schedule`` brings an earlier one (``poke``); with no timer stored
  it sleeps until poked, so an idle supervisor holds no sleeper on its clock.
  A cluster node also polls (``poll``): other nodes schedule timers it must
  see.
- ``_AT_ONCE`` firers queue the timers' turns (the supervisor's ``fire``),
  each returning once the turn is queued and stored with the conversation.
- the remover removes the rows of fired timers, all those fired while its
  last statement ran in one more statement (``drop_fired_timers``), each row
  only if it still holds that scheduling (by the timer's id) and, in a
  cluster, only while this node's lease epoch is current: a crash before the
  removal fires the timer again, and the session recognises the turn it
  already holds by the message id, so the timer runs once.

A timer is "in flight" from the read that handed it to a firer until its row
is removed (or its firing is put off): the reader skips it, and when
everything due is in flight it waits for one of them to settle instead of
reading again at once.

Nothing spins on a failing store: a failing read is retried after 1 s,
doubling up to 30 s; a timer whose firing or removal fails is put off the
same way on its own while the others go on; a timer owned by another node is
looked at again after the poll interval. While timers are put off the reader
still looks for others at least every second.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._clock import Clock, utcnow
from ..state import StoredTimer
from ._intake import _stored_before_acknowledged, accepted, check_not_superseded, check_saved
from ._timer_turns import timer_message

if TYPE_CHECKING:
    from ._actor import Actor

__all__: list[str] = ["Fired", "TimerLoop", "deliver_timer", "drop_fired", "wall_now"]

_log = structlog.get_logger("sessionvisor")

#: What firing a timer came to: its turn is queued and stored ("fired"), its
#: conversation is gone ("gone"): both remove the row; another node owns it
#: ("elsewhere"): the row stays.
Fired = Literal["fired", "elsewhere", "gone"]
Fire = Callable[[str, StoredTimer], Awaitable[Fired]]
_Due = tuple[str, StoredTimer]
_Name = tuple[str, str, str]  # conversation id, key, id (one scheduling)

_BATCH = 256  # timers read per pass, beyond those in flight or put off
_MAX_READ = 4096  # the most rows one read asks for
_AT_ONCE = 64  # timers fired concurrently
_DROP_BATCH = 1024  # fired timers removed per statement
_FIRST_DELAY = 1.0
_MAX_DELAY = 30.0
_RECHECK = 60.0  # the longest sleep while a timer is stored (the wall clock may jump)


def wall_now(clock: Clock) -> datetime:
    """The wall-clock time on ``clock``: its ``wall()`` when it has one (a test's
    ``ManualClock``), else the system's UTC time."""
    wall = getattr(clock, "wall", None)
    found: datetime = utcnow() if wall is None else wall()
    return found


def _name(cid: str, timer: StoredTimer) -> _Name:
    return (cid, timer.key, timer.id)


async def drop_fired(store: Any, fired: Sequence[_Due]) -> list[bool]:
    """Remove the rows of fired timers, each by its scheduling's id: in one
    statement through the store's ``drop_fired_timers``, else one ``drop_timer``
    each (a store of your own without it). Return, per timer, whether it went."""
    rows = [_name(cid, timer) for cid, timer in fired]
    batch = getattr(store, "drop_fired_timers", None)
    if batch is not None:
        removed: list[bool] = list(await batch(rows))
        return removed
    return [bool(await store.drop_timer(c, k, timer_id=i)) for c, k, i in rows]


class TimerLoop:
    """Fires the durable timers of one supervisor (module docstring)."""

    def __init__(self, clock: Clock, store: Any, *, poll: float | None = None) -> None:
        self._clock = clock
        self._store = store
        self._poll = poll
        self._wake = anyio.Event()
        self._target: datetime | None = None  # the due time the reader sleeps toward
        self._running = False
        # Timers put off after a failed or refused firing: (cid, key, id) -> (at, delay).
        self._put_off: dict[_Name, tuple[float, float]] = {}
        # Read and handed to a firer, until removed or put off.
        self._in_flight: set[_Name] = set()
        self._settled = 0  # timers that left ``_in_flight``
        self._stalled = False  # the reader waits for a timer in flight to settle
        self._fired: list[_Due] = []  # fired, waiting for the remover
        self._removable = anyio.Event()
        self.fired = 0  # timers whose turn this loop queued

    def poke(self, due: datetime) -> None:
        """A timer due at ``due`` was scheduled: wake the loop if that is sooner."""
        if self._running and (self._target is None or due < self._target):
            self._target = due
            self._wake.set()

    async def run(self, fire: Fire) -> None:
        self._running = True
        send, receive = anyio.create_memory_object_stream[_Due]()
        with send, receive:
            async with anyio.create_task_group() as tg:
                for _ in range(_AT_ONCE):
                    tg.start_soon(self._firer, fire, receive.clone())
                tg.start_soon(self._remover)
                await self._read(send)

    async def _read(self, send: MemoryObjectSendStream[_Due]) -> None:
        failures = 0
        while True:
            try:
                deadline = await self._pass(send)
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
                self._stalled = False
            await self._sleep(deadline)

    async def _pass(self, send: MemoryObjectSendStream[_Due]) -> float | None:
        """Hand what is due to the firers; return the clock time to look again at
        (None: when poked)."""
        store = self._store
        self._target = None  # a timer scheduled during the pass wakes the next sleep
        self._stalled = False
        settled = self._settled
        while True:
            now = wall_now(self._clock)
            limit = min(_BATCH + len(self._in_flight) + len(self._put_off), _MAX_READ)
            due = await store.due_timers(now, limit)
            ready = [(cid, t) for cid, t in due if not self._busy(cid, t)]
            self._in_flight.update(_name(cid, t) for cid, t in ready)
            for item in ready:
                await send.send(item)  # waits while every firer is busy
            if len(due) < limit or not ready:
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
            elif self._in_flight or self._put_off:
                # Due but in flight (look again when one settles) or put off (when the
                # first one's wait ends); at the latest in a second, for timers that
                # came due behind them.
                later = [at for at, _ in self._put_off.values() if at > clock_now]
                deadlines.append(min([*later, clock_now + _FIRST_DELAY]))
                self._stalled = bool(self._in_flight)
                if self._settled != settled:
                    deadlines.append(clock_now)  # some settled during the pass
            else:
                deadlines.append(clock_now)  # due since the read: look again now
        if self._put_off:
            # Forget the entries of timers fired (or dropped) since they were put off.
            stale = clock_now - 2 * _MAX_DELAY
            self._put_off = {k: v for k, v in self._put_off.items() if v[0] > stale}
        if not self._wake.is_set():
            self._target = next_due
        return min(deadlines) if deadlines else None

    def _busy(self, cid: str, timer: StoredTimer) -> bool:
        """In flight, or put off and its wait not over."""
        name = _name(cid, timer)
        if name in self._in_flight:
            return True
        entry = self._put_off.get(name)
        return entry is not None and entry[0] > self._clock.now()

    def _settle(self, name: _Name) -> None:
        self._in_flight.discard(name)
        self._settled += 1
        if self._stalled:
            self._stalled = False
            self._wake.set()

    def _put_off_failed(self, name: _Name) -> float:
        _, last = self._put_off.get(name, (0.0, 0.0))
        delay = min(max(last * 2, _FIRST_DELAY), _MAX_DELAY)
        self._put_off[name] = (self._clock.now() + delay, delay)
        return delay

    async def _firer(self, fire: Fire, receive: MemoryObjectReceiveStream[_Due]) -> None:
        with receive:
            async for cid, timer in receive:
                await self._fire_one(fire, cid, timer)

    async def _fire_one(self, fire: Fire, cid: str, timer: StoredTimer) -> None:
        name = _name(cid, timer)
        try:
            outcome = await fire(cid, timer)
        except Exception as exc:
            delay = self._put_off_failed(name)
            _log.warning(
                "timer_fire_failed",
                conversation_id=cid,
                key=timer.key,
                error=f"{type(exc).__name__}: {exc}",
                retry_in=delay,
            )
            self._settle(name)
            return
        if outcome == "elsewhere":
            # Another node owns the conversation and fires it; look again later in case
            # it dies first.
            self._put_off[name] = (self._clock.now() + (self._poll or _FIRST_DELAY), 0.0)
            self._settle(name)
            return
        if outcome == "fired":
            self.fired += 1
        self._fired.append((cid, timer))
        self._removable.set()

    async def _remover(self) -> None:
        while True:
            await self._removable.wait()
            self._removable = anyio.Event()
            batch = self._fired[:_DROP_BATCH]
            del self._fired[:_DROP_BATCH]
            if self._fired:
                self._removable.set()
            try:
                removed = await drop_fired(self._store, batch)
            except Exception as exc:
                removed = [False] * len(batch)
                _log.warning(
                    "timers_removal_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    timers=len(batch),
                )
            for (cid, timer), gone in zip(batch, removed, strict=True):
                name = _name(cid, timer)
                if gone:
                    self._put_off.pop(name, None)
                else:
                    # Still stored (the store failed, or this node lost the lease) or
                    # replaced meanwhile: fired again after the wait, its turn is
                    # recognised and only the removal is made.
                    self._put_off_failed(name)
                self._settle(name)

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
