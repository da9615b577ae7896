"""Quotas per owner: how many turns of one owner run at once, and how many
messages one owner may send per minute (``SupervisorOpts.max_running_per_owner``
and ``messages_per_minute_per_owner``, read from the supervisor's options).

The owner key is ``owner_of(scope)``; a conversation (or a caller) whose owner
is None is never limited.

**Running turns.** A turn holds one of its owner's slots from the moment it
begins until it ends. A turn that would begin from the queue while the owner
has none free does not begin: its messages stay in the conversation's queue
(``MessageQueued``, status ``idle``), and the conversation's worker waits in the
owner's line, first come first served across the owner's conversations. The
slot a turn frees goes to the head of that line. A stop or drain of a waiting
conversation leaves the line (its messages are saved as waiting, so the next
start answers them); a ``cancel`` leaves it and holds its queue, as a cancel
of a running turn does. A resumed turn and the rerun of a turn cut by a crash
continue work already admitted: they take a slot without waiting (so the
owner may briefly run more than the limit; queued turns then wait until it is
below again).

**Messages per minute.** A token bucket per owner holding at most the rate,
refilled continuously (one token every ``60 / rate`` seconds). ``send`` takes a
token before anything is stored; with none left it raises ``RateLimited`` with
the seconds until one is back. A send refused for any other reason, or
acknowledged as a duplicate of a message already accepted, gives its token
back.

``LocalQuotas`` is the one-process implementation; a cluster provides its own
``Quotas`` (``sessionvisor.cluster``). The runtime installs one per supervisor
(``install_quotas``, from its ``mailbox``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio

from .._errors import RateLimited
from ._events import Status

if TYPE_CHECKING:
    from .._clock import Clock
    from ._actor import Actor
    from ._handle import Delivery
    from ._mailbox import LocalMailbox
    from ._seams import Mailbox

__all__: list[str] = [
    "NO_QUOTAS",
    "LocalQuotas",
    "QuotaMailbox",
    "Quotas",
    "TokenBuckets",
    "cancel_waiting",
    "install_quotas",
    "rate_limited",
    "take_turn_slot",
]

_PRUNE_AT = 4096  # buckets kept before the full ones are dropped


class Quotas(Protocol):
    """What the runtime asks of an owner's quotas (see the module docstring).

    The synchronous calls never block; ``wait_start`` and ``take_message`` may
    await (a cluster asks Redis).
    """

    def try_start(self, conversation_id: str, owner: str | None) -> bool:
        """Take a slot now if one is free and nobody of the owner waits; True: taken
        (or the owner is not limited). False: the conversation is in the owner's line
        from now on (``wait_start`` waits there; ``abandon`` leaves it)."""
        ...

    async def wait_start(self, conversation_id: str, owner: str) -> bool:
        """Wait in the owner's line for a slot. True: taken; False: ``abandon`` was
        called for the conversation (a stop, a drain, a cancel)."""
        ...

    def waiting(self, conversation_id: str) -> bool:
        """True while the conversation waits in its owner's line."""
        ...

    def abandon(self, conversation_id: str) -> None:
        """The conversation leaves its owner's line (nothing when it is not in one)."""
        ...

    def occupy(self, conversation_id: str, owner: str | None) -> None:
        """Take a slot without waiting (a resume, a rerun); nothing if one is held."""
        ...

    def release(self, conversation_id: str) -> None:
        """Give back the conversation's slot, if it holds one."""
        ...

    async def take_message(self, owner: str) -> None:
        """Take one message token of the owner.

        Raises:
            RateLimited: none is left.
        """
        ...

    def give_back_message(self, owner: str) -> None:
        """Return a token taken for a message that was not accepted."""
        ...


def rate_limited(rate: int, retry_after: float) -> RateLimited:
    """The refusal of a message over ``rate`` per minute (it never names the owner)."""
    return RateLimited(
        f"too many messages: the limit is {rate} per minute for each owner; "
        f"retry in {retry_after:.1f} s",
        retry_after,
    )


class _NoQuotas:
    """No limit at all (the host's default until a runtime installs its quotas)."""

    def try_start(self, conversation_id: str, owner: str | None) -> bool:
        return True

    async def wait_start(self, conversation_id: str, owner: str) -> bool:
        return True

    def waiting(self, conversation_id: str) -> bool:
        return False

    def abandon(self, conversation_id: str) -> None:
        pass

    def occupy(self, conversation_id: str, owner: str | None) -> None:
        pass

    def release(self, conversation_id: str) -> None:
        pass

    async def take_message(self, owner: str) -> None:
        pass

    def give_back_message(self, owner: str) -> None:
        pass


NO_QUOTAS: Quotas = _NoQuotas()


class TokenBuckets:
    """One token bucket per owner: ``rate`` tokens at most, refilled at ``rate`` per
    minute on ``now()`` (seconds)."""

    __slots__ = ("_buckets", "_now", "rate")

    def __init__(self, rate: int, now: Callable[[], float]) -> None:
        self.rate = rate
        self._now = now
        self._buckets: dict[str, tuple[float, float]] = {}  # owner -> (tokens, at)

    def _level(self, owner: str, now: float) -> float:
        tokens, at = self._buckets.get(owner, (float(self.rate), now))
        return min(float(self.rate), tokens + max(0.0, now - at) * self.rate / 60.0)

    def take(self, owner: str) -> float:
        """Take a token; return 0.0, or the seconds until one is back (none taken)."""
        now = self._now()
        tokens = self._level(owner, now)
        if tokens >= 1.0:
            self._buckets[owner] = (tokens - 1.0, now)
            if len(self._buckets) > _PRUNE_AT:
                self._prune(now)
            return 0.0
        self._buckets[owner] = (tokens, now)
        return (1.0 - tokens) * 60.0 / self.rate

    def give_back(self, owner: str) -> None:
        now = self._now()
        self._buckets[owner] = (min(float(self.rate), self._level(owner, now) + 1.0), now)

    def _prune(self, now: float) -> None:
        full = [o for o in self._buckets if self._level(o, now) >= self.rate]
        for owner in full:  # a full bucket is what a missing one means
            del self._buckets[owner]


class _Waiter:
    __slots__ = ("conversation_id", "done", "granted", "owner")

    def __init__(self, conversation_id: str, owner: str) -> None:
        self.conversation_id = conversation_id
        self.owner = owner
        self.done = anyio.Event()
        self.granted = False


class LocalQuotas:
    """``Quotas`` for one process (see the module docstring)."""

    def __init__(
        self, *, running: int | None, per_minute: int | None, now: Callable[[], float]
    ) -> None:
        self.running = running
        self.buckets = None if per_minute is None else TokenBuckets(per_minute, now)
        self._held: dict[str, str] = {}  # conversation -> owner, for every slot taken
        self._counts: dict[str, int] = {}  # owner -> slots taken
        self._lines: dict[str, deque[_Waiter]] = {}  # owner -> its waiting conversations
        self._waiters: dict[str, _Waiter] = {}  # conversation -> its place in a line

    def limit_for(self, owner: str) -> int | None:
        """The owner's limit (a cluster's share when it cannot count cluster-wide)."""
        return self.running

    def holding(self, owner: str) -> int:
        return self._counts.get(owner, 0)

    def held(self) -> dict[str, str]:
        """A copy of the slots taken here: conversation -> owner."""
        return dict(self._held)

    # -- running turns -------------------------------------------------------------

    def try_start(self, conversation_id: str, owner: str | None) -> bool:
        if owner is None or self.running is None:
            return True
        if conversation_id in self._held:
            return True
        if conversation_id in self._waiters:
            return False  # already in the line
        limit = self.limit_for(owner)
        if limit is None or (not self._lines.get(owner) and self.holding(owner) < limit):
            self._take(conversation_id, owner)
            return True
        # In the line from now (arrival order), before any worker awaits.
        self._waiters[conversation_id] = waiter = _Waiter(conversation_id, owner)
        self._lines.setdefault(owner, deque()).append(waiter)
        return False

    async def wait_start(self, conversation_id: str, owner: str) -> bool:
        if self.try_start(conversation_id, owner):
            return True
        waiter = self._waiters.get(conversation_id)
        if waiter is None:  # granted meanwhile (or abandoned): the slot says which
            return conversation_id in self._held
        try:
            await waiter.done.wait()
        except BaseException:
            if waiter.granted:
                self.release(conversation_id)
            else:
                self.abandon(conversation_id)
            raise
        return waiter.granted

    def waiting(self, conversation_id: str) -> bool:
        return conversation_id in self._waiters

    def abandon(self, conversation_id: str) -> None:
        waiter = self._waiters.pop(conversation_id, None)
        if waiter is None:
            return
        line = self._lines.get(waiter.owner)
        if line is not None:
            line.remove(waiter)
            if not line:
                del self._lines[waiter.owner]
        waiter.done.set()
        self.grant(waiter.owner)  # it may have been the head of a line with room

    def occupy(self, conversation_id: str, owner: str | None) -> None:
        if owner is not None and self.running is not None and conversation_id not in self._held:
            self._take(conversation_id, owner)

    def release(self, conversation_id: str) -> None:
        owner = self._held.pop(conversation_id, None)
        if owner is None:
            return
        left = self._counts[owner] - 1
        if left:
            self._counts[owner] = left
        else:
            del self._counts[owner]
        self.grant(owner)

    def grant(self, owner: str) -> None:
        """Give free slots to the head of the owner's line."""
        line = self._lines.get(owner)
        while line:
            limit = self.limit_for(owner)
            if limit is not None and self.holding(owner) >= limit:
                return
            waiter = line.popleft()
            del self._waiters[waiter.conversation_id]
            self._take(waiter.conversation_id, owner)
            waiter.granted = True
            waiter.done.set()
        self._lines.pop(owner, None)

    def _take(self, conversation_id: str, owner: str) -> None:
        self._held[conversation_id] = owner
        self._counts[owner] = self._counts.get(owner, 0) + 1

    # -- messages --------------------------------------------------------------------

    async def take_message(self, owner: str) -> None:
        self.check_message(owner)

    def check_message(self, owner: str) -> None:
        """``take_message`` without awaiting (raises ``RateLimited``)."""
        buckets = self.buckets
        if buckets is None:
            return
        wait = buckets.take(owner)
        if wait > 0.0:
            raise rate_limited(buckets.rate, wait)

    def give_back_message(self, owner: str) -> None:
        if self.buckets is not None:
            self.buckets.give_back(owner)


class QuotaMailbox:
    """A ``Mailbox`` that takes the sender's message token before a ``send``; every
    other command passes through unchanged."""

    def __init__(self, inner: Mailbox, quotas: Quotas, owner_of: Callable[[Any], str | None]):
        self._inner = inner
        self._quotas = quotas
        self._owner_of = owner_of

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # every other command, unchanged

    async def send(
        self,
        conversation_id: str,
        content: Any,
        *,
        scope: Any,
        request_opts: dict[str, Any],
        reroute: bool,
        message_id: str | None,
    ) -> Delivery:
        owner = self._owner_of(scope)
        if owner is not None:
            await self._quotas.take_message(owner)
        try:
            delivery = await self._inner.send(
                conversation_id,
                content,
                scope=scope,
                request_opts=request_opts,
                reroute=reroute,
                message_id=message_id,
            )
        except BaseException:
            if owner is not None:
                self._quotas.give_back_message(owner)  # not accepted: it does not count
            raise
        if owner is not None and delivery.duplicate:
            self._quotas.give_back_message(owner)  # accepted before, and counted then
        return delivery


def install_quotas(
    mailbox: Mailbox,
    local: LocalMailbox,
    build: Callable[[int | None, int | None, Clock], Quotas] | None = None,
) -> Mailbox:
    """Give the supervisor's actors their quotas (``build(running, per_minute, clock)``,
    by default ``LocalQuotas``) and return the mailbox commands go through."""
    starter = local.starter
    opts = starter.defaults
    running, per_minute = opts.max_running_per_owner, opts.messages_per_minute_per_owner
    if running is None and per_minute is None:
        return mailbox
    host = starter.host
    clock = host.clock
    if build is None:
        quotas: Quotas = LocalQuotas(running=running, per_minute=per_minute, now=clock.now)
    else:
        quotas = build(running, per_minute, clock)
    host.quotas = quotas
    if per_minute is None:
        return mailbox
    return cast("Mailbox", QuotaMailbox(mailbox, quotas, local.owner_of))


# -- the actor's side ------------------------------------------------------------------


async def take_turn_slot(actor: Actor) -> bool:
    """Before a turn begins from the queue: take the owner's slot, waiting in its line
    when none is free. False: the wait was abandoned (a stop, a drain, a cancel)."""
    quotas = actor.host.quotas
    cid, owner = actor.conversation_id, actor.owner
    if owner is None or quotas.try_start(cid, owner):
        return True
    if actor.status is Status.RUNNING:
        actor.set_status(Status.IDLE)  # the turn before is over; the next one waits
    actor.log().info("turn_waits_for_owner_slot")
    return await quotas.wait_start(cid, owner)


async def cancel_waiting(actor: Actor) -> Status | None:
    """A cancel of a conversation whose next turn waits for its owner's slot: it leaves
    the line and its queue is held (as behind a cancelled turn) until the user's next
    message. None: it was not waiting.

    Raises:
        StoreUnavailable: the cancel could not be stored (it holds in memory).
    """
    from ._intake import check_not_superseded, check_saved  # _intake needs the turns

    quotas = actor.host.quotas
    if not quotas.waiting(actor.conversation_id):
        return None
    quotas.abandon(actor.conversation_id)
    actor.hold_queue()
    actor.set_status(Status.CANCELLED)
    actor.log().info("turn_cancelled", waiting=True)
    saved = await actor.persist("cancel")
    check_not_superseded(actor)
    check_saved(actor, saved, what="the cancel")
    return Status.CANCELLED
