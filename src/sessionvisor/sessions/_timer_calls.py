"""Durable timers: the supervisor's calls (``TimerCalls``, a mixin of
``SessionSupervisor``), the checks of their arguments, and firing one timer.

A timer is stored with its conversation (the store's optional timer methods,
see ``StateStore``) and fires at its due time through the supervisor's timer
loop (``_timer_loop``): the conversation wakes if it sleeps and the timer's
turn is queued like a message (``_timer_turns``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .._errors import NothingStored, StoreUnavailable, UnknownTimer
from .._json import check_json
from ..state import StoredTimer, TimerInfo
from ._seams import RunningElsewhere
from ._timer_loop import Fired, TimerLoop, deliver_timer, wall_now
from ._validation import _CONTROL, check_conversation_id, content_size_ok

if TYPE_CHECKING:
    from .._clock import Clock
    from ..state import StateStore
    from ._lifetime import Lifetime
    from ._seams import Mailbox, Registry

__all__: list[str] = [
    "MAX_DELAY",
    "MAX_KEY_LENGTH",
    "MAX_PAYLOAD_BYTES",
    "TimerCalls",
    "check_timer_key",
    "schedule_timer",
]

MAX_DELAY = 365 * 24 * 3600.0  # a timer is due within a year
MAX_PAYLOAD_BYTES = 64 * 1024  # a payload's size as JSON
MAX_KEY_LENGTH = 128
_TIMER_METHODS = ("put_timer", "drop_timer", "list_timers", "due_timers", "next_timer_due")


def check_timer_key(key: Any, conversation_id: str) -> str:
    """Return the key, or raise TypeError/ValueError naming ``key``."""
    if not isinstance(key, str):
        raise TypeError(
            f"conversation {conversation_id!r}: timer key must be a str, got {type(key).__name__}"
        )
    if not key or len(key) > MAX_KEY_LENGTH or _CONTROL.search(key):
        raise ValueError(
            f"conversation {conversation_id!r}: timer key must be 1 to {MAX_KEY_LENGTH} "
            f"characters with no control character, got {key[: MAX_KEY_LENGTH + 1]!r}"
        )
    return key


def _due(at: Any, delay: Any, *, now: datetime, conversation_id: str) -> datetime:
    cid = conversation_id
    if (at is None) == (delay is None):
        raise TypeError(f"conversation {cid!r}: give exactly one of at= and delay= for a timer")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise TypeError(
                f"conversation {cid!r}: timer delay must be a number of seconds, "
                f"got {type(delay).__name__}"
            )
        if not math.isfinite(delay) or delay < 0 or delay > MAX_DELAY:
            raise ValueError(
                f"conversation {cid!r}: timer delay must be 0 to {MAX_DELAY:.0f} seconds "
                f"(a year), got {delay!r}"
            )
        return now + timedelta(seconds=float(delay))
    if not isinstance(at, datetime):
        raise TypeError(
            f"conversation {cid!r}: timer at= must be a datetime, got {type(at).__name__}"
        )
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(
            f"conversation {cid!r}: timer at= must be an aware datetime (with a timezone), "
            f"got the naive {at.isoformat()}"
        )
    if (at - now).total_seconds() > MAX_DELAY:
        raise ValueError(f"conversation {cid!r}: timer at= {at.isoformat()} is over a year away")
    return at  # one in the past fires at once


def check_timer_args(
    payload: Any, *, at: Any, delay: Any, key: Any, now: datetime, conversation_id: str
) -> StoredTimer:
    """The timer to store, or TypeError/ValueError naming the argument at fault."""
    cid = conversation_id
    due = _due(at, delay, now=now, conversation_id=cid)
    check_json(payload, "payload", conversation_id=cid)
    if not content_size_ok(payload, MAX_PAYLOAD_BYTES):
        raise ValueError(
            f"conversation {cid!r}: timer payload is over {MAX_PAYLOAD_BYTES} bytes as JSON"
        )
    key = "t-" + os.urandom(12).hex() if key is None else check_timer_key(key, cid)
    return StoredTimer(key, due.astimezone(UTC), payload, os.urandom(16).hex())


def timer_store(store: Any) -> Any:
    """The store, or TypeError when it cannot keep timers."""
    missing = [name for name in _TIMER_METHODS if not callable(getattr(store, name, None))]
    if missing:
        raise TypeError(
            f"{type(store).__name__} cannot keep durable timers: it has no "
            f"{', '.join(missing)} (see the StateStore docstring)"
        )
    return store


async def _stored(call: Any, conversation_id: str) -> Any:
    """Run a store call; a failing store is ``StoreUnavailable`` (retry)."""
    try:
        return await call
    except (TypeError, ValueError, LookupError, StoreUnavailable):
        raise
    except Exception as exc:
        raise StoreUnavailable(
            f"conversation {conversation_id!r}: the timer could not be stored or read "
            f"(the store failed: {type(exc).__name__}); retry"
        ) from exc


async def schedule_timer(
    store: Any,
    clock: Clock,
    loop: TimerLoop | None,
    conversation_id: str,
    payload: Any,
    *,
    at: Any,
    delay: Any,
    key: Any,
) -> TimerInfo:
    """Check, store and arm one timer (the supervisor's and a turn's ``schedule``)."""
    cid = conversation_id
    timer = check_timer_args(
        payload, at=at, delay=delay, key=key, now=wall_now(clock), conversation_id=cid
    )
    await _stored(timer_store(store).put_timer(cid, timer), cid)
    if loop is not None:
        loop.poke(timer.due)
    return timer.info()


class TimerCalls:
    """``SessionSupervisor``'s durable timers: ``schedule``, ``cancel_timer``, ``timers``."""

    _store: StateStore
    _clock: Clock
    _life: Lifetime
    _mailbox: Mailbox
    _registry: Registry
    check_access: Callable[..., Awaitable[bool]]

    async def _timer_conversation(self, conversation_id: Any, scope: Any) -> str:
        cid = check_conversation_id(conversation_id)
        if not await self.check_access(cid, scope=scope):
            raise NothingStored(f"conversation {cid!r} not found: it has no timers")
        return cid

    async def schedule(
        self,
        conversation_id: str,
        payload: Any = None,
        *,
        at: datetime | None = None,
        delay: float | None = None,
        key: str | None = None,
        scope: Any = None,
    ) -> TimerInfo:
        """Store a durable timer for the conversation and return it.

        At its due time (``at``, an aware datetime, or ``delay`` seconds from now;
        one in the past fires at once) the conversation wakes if it sleeps and
        the agent's ``on_timer(turn, payload)`` runs as a turn, queued like a
        message (an agent without ``on_timer`` gets the payload as a user message
        in a plain turn). A timer survives restarts and crashes and fires once.
        Scheduling an existing ``key`` replaces that timer; without ``key`` one is
        generated (it is in the returned ``TimerInfo``).

        Raises:
            TypeError/ValueError: a bad argument (named in the message): both or
                neither of ``at``/``delay``, a delay that is not a finite number of
                seconds from 0 to a year, a naive ``at``, a payload that is not
                JSON or is over 64 KiB as JSON, a key that is not a str of 1 to 128
                characters; TypeError too when the store cannot keep timers.
            NothingStored: no such conversation (a ``LookupError``).
            AccessDenied: another owner's conversation.
            StoreUnavailable: the store failed; the timer may not be stored.
        """
        cid = check_conversation_id(conversation_id)
        check_timer_args(
            payload, at=at, delay=delay, key=key, now=wall_now(self._clock), conversation_id=cid
        )
        timer_store(self._store)
        await self._timer_conversation(cid, scope)
        return await schedule_timer(
            self._store,
            self._clock,
            self._life.timers,
            cid,
            payload,
            at=at,
            delay=delay,
            key=key,
        )

    async def cancel_timer(self, conversation_id: str, key: str, *, scope: Any = None) -> None:
        """Remove the conversation's timer ``key`` before it fires.

        Raises:
            UnknownTimer: the conversation has no such timer (a ``LookupError``;
                one that fired already is gone).
            NothingStored, AccessDenied, StoreUnavailable, TypeError/ValueError
                for a bad key.
        """
        cid = check_conversation_id(conversation_id)
        check_timer_key(key, cid)
        store = timer_store(self._store)
        await self._timer_conversation(cid, scope)
        if not await _stored(store.drop_timer(cid, key), cid):
            raise UnknownTimer(f"conversation {cid!r} has no timer {key!r}", key)

    async def timers(self, conversation_id: str, *, scope: Any = None) -> list[TimerInfo]:
        """The conversation's pending timers, soonest first.

        Raises:
            NothingStored, AccessDenied, StoreUnavailable.
        """
        cid = check_conversation_id(conversation_id)
        store = timer_store(self._store)
        await self._timer_conversation(cid, scope)
        found = await _stored(store.list_timers(cid), cid)
        return [timer.info() for timer in found]

    async def _fire_timer(self, conversation_id: str, timer: StoredTimer) -> Fired:
        """Queue a due timer's turn on its session (waking it here when no node serves
        it) and return once it is stored; the timer loop calls this, and removes the
        row of a timer "fired" or "gone"."""
        cid = conversation_id
        actor = self._registry.live(cid)
        if actor is None:
            if await self._store.load(cid) is None:
                return "gone"  # deleted or quarantined: its timer goes too
            try:
                actor = (await self._mailbox.ensure(cid, scope=None, trusted=True)).actor
            except RunningElsewhere:
                return "elsewhere"  # its owner fires it
        await deliver_timer(actor, timer)
        return "fired"
