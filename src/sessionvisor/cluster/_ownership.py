"""The leases this node holds: taken before a session starts, renewed, given up.

``Leases`` keeps one ``Lease`` per conversation this node serves. A session is
started only after ``take`` won the lease and fenced the store with its epoch;
``FencedStore`` then stamps every save with that epoch, so the database refuses
the save of an owner that was replaced. The renewal loop extends every held
lease in one statement; a lease it cannot confirm before its local monotonic
deadline (measured from before the renewal call) is dropped and its session
stopped as superseded: past that moment another node may own it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import anyio
import attrs
import structlog

from .._errors import RegistryUnavailable, StaleWriteError
from ..state import StoredConversation
from ..state._store import Lifecycle
from ._events import EventStreams
from ._leases import Lease, LeaseTable
from ._pg import monotonic

__all__: list[str] = ["FencedStore", "Leases", "OwnedElsewhere"]

_log = structlog.get_logger("sessionvisor")


class OwnedElsewhere(Exception):
    """Another live node holds the conversation's lease (internal: the mailbox posts instead)."""

    def __init__(self, conversation_id: str, node_id: str | None) -> None:
        super().__init__(f"conversation {conversation_id!r} is served by node {node_id!r}")
        self.conversation_id = conversation_id
        self.node_id = node_id


def unavailable(what: str, exc: BaseException) -> RegistryUnavailable:
    return RegistryUnavailable(
        f"{what}: the cluster's database is unreachable ({type(exc).__name__})"
    )


class Leases:
    """The leases of one node; see the module docstring."""

    def __init__(
        self,
        table: LeaseTable,
        store: Any,
        streams: EventStreams,
        *,
        renew_every: float,
        on_lost: Callable[[str, str], None],
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.table = table
        self._store = store  # the real store: fence() raises its stored epoch
        self._streams = streams
        self._renew_every = renew_every
        self._on_lost = on_lost
        self._clock = clock
        self.held: dict[str, Lease] = {}
        self._releasing: dict[str, anyio.Event] = {}
        self._changed = anyio.Event()

    def epoch(self, conversation_id: str) -> int | None:
        """The epoch to write with, or None when this node may not write (any more)."""
        lease = self.held.get(conversation_id)
        if lease is None or lease.expired(self._clock()):
            return None
        return lease.epoch

    async def take(self, conversation_id: str) -> Lease:
        """Hold the conversation's lease (kept when held already), fencing older writers.

        Raises:
            OwnedElsewhere: another live node holds it.
            RegistryUnavailable: the database is unreachable.
        """
        cid = conversation_id
        releasing = self._releasing.get(cid)
        if releasing is not None:
            await releasing.wait()
        lease = self.held.get(cid)
        if lease is not None and not lease.expired(self._clock()):
            return lease
        try:
            lease = await self.table.acquire_fenced(cid, self._store)
            owner = None if lease is not None else await self.table.owner(cid)
        except Exception as exc:
            if _is_database_error(exc):
                raise unavailable(f"conversation {cid!r}", exc) from exc
            raise
        if lease is None:
            raise OwnedElsewhere(cid, owner.node_id if owner is not None else None)
        await self.adopt(lease)
        return lease

    async def adopt(self, lease: Lease) -> None:
        """Hold a lease taken (and the store fenced) elsewhere: by ``take`` or the sweeper."""
        self.held[lease.conversation_id] = lease
        self._changed.set()
        # Redis refuses the old owner's events from now on (a courtesy: readers
        # drop stale epochs anyway, and Redis may be down).
        with anyio.move_on_after(1.0):
            try:
                await self._streams.fence(lease.conversation_id, lease.epoch)
            except Exception as exc:
                _log.info(
                    "cluster_stream_fence_skipped",
                    conversation_id=lease.conversation_id,
                    error=type(exc).__name__,
                )

    def release_soon(
        self, conversation_id: str, spawn: Callable[[Any], None], *, forget: bool = False
    ) -> None:
        """Give the lease up now (its session ended and saved): the next node needs no wait.

        With ``forget`` (nothing was published under it), a first lease of a
        conversation with nothing stored is deleted instead (``LeaseTable.forget``).
        """
        cid = conversation_id
        lease = self.held.pop(cid, None)
        if lease is None or cid in self._releasing:
            return
        done = self._releasing[cid] = anyio.Event()
        forget = forget and lease.epoch == 1

        async def release() -> None:
            try:
                if not (forget and await self.table.forget(cid)):
                    await self.table.release([cid])
            except Exception as exc:
                # Not fatal: the lease runs out by itself after the TTL.
                _log.warning("cluster_release_failed", conversation_id=cid, error=repr(exc))
            finally:
                del self._releasing[cid]
                done.set()

        spawn(release)

    async def wait_releases(self) -> None:
        while self._releasing:
            await next(iter(self._releasing.values())).wait()

    async def release_all(self) -> None:
        ids = list(self.held)
        self.held.clear()
        if ids:
            try:
                await self.table.release(ids)
            except Exception as exc:
                _log.warning("cluster_release_failed", conversations=len(ids), error=repr(exc))

    async def run(self) -> None:
        """Renew every held lease every ``renew_every``, while a watchdog drops each
        lease at its deadline, without waiting for a renewal call that hangs."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            while True:
                await anyio.sleep(self._renew_every)
                await self._renew()

    async def _watch(self) -> None:
        """Drop every lease at its local deadline, whatever the database does meanwhile."""
        while True:
            self._changed = anyio.Event()
            self._drop_expired()
            first = min((lease.deadline for lease in self.held.values()), default=math.inf)
            with anyio.move_on_after(max(0.0, first - self._clock())):
                await self._changed.wait()

    async def _renew(self) -> None:
        taken = {cid: lease.epoch for cid, lease in self.held.items()}
        if not taken:
            return
        # Past the first deadline the answer comes too late for that lease (the
        # watchdog dropped it); the table's own timeout bounds the call anyway.
        first = min(lease.deadline for lease in self.held.values())
        renewal = None
        with anyio.move_on_after(max(self._renew_every, first - self._clock())):
            try:
                renewal = await self.table.renew(list(taken))
            except Exception as exc:
                _log.warning("cluster_renewal_failed", leases=len(taken), error=repr(exc))
                return
        if renewal is None:
            _log.warning("cluster_renewal_failed", leases=len(taken), error="no answer in time")
            return
        for cid, epoch in taken.items():
            lease = self.held.get(cid)
            if lease is None or lease.epoch != epoch:
                continue  # released, dropped or taken again meanwhile
            if cid in renewal.held:
                self.held[cid] = attrs.evolve(lease, deadline=max(lease.deadline, renewal.deadline))
            else:
                self._lose(cid, "its lease was taken by another node")

    def _drop_expired(self) -> None:
        now = self._clock()
        for cid in [cid for cid, lease in self.held.items() if lease.expired(now)]:
            self._lose(cid, "its lease could not be renewed in time")

    def _lose(self, conversation_id: str, why: str) -> None:
        if self.held.pop(conversation_id, None) is None:
            return
        _log.warning("cluster_lease_lost", conversation_id=conversation_id, reason=why)
        self._on_lost(conversation_id, why)


class FencedStore:
    """The store as the sessions of one node see it: every save carries the lease's epoch.

    A save for a conversation whose lease this node does not hold (any more) is
    refused here with ``StaleWriteError``; one whose epoch the database finds
    older than the stored one is refused there, in the same statement.
    """

    def __init__(self, store: Any, leases: Leases) -> None:
        self._inner = store
        self._leases = leases

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def load(self, conversation_id: str) -> StoredConversation | None:
        try:
            found: StoredConversation | None = await self._inner.load(conversation_id)
        except Exception as exc:
            if _is_database_error(exc):
                raise unavailable(f"conversation {conversation_id!r}", exc) from exc
            raise
        return found

    def __repr__(self) -> str:
        return f"FencedStore({self._inner!r})"

    async def quarantine(self, conversation_id: str) -> str:
        """Move an unreadable record aside, on the node that holds its lease only.

        Any node may read a conversation (to check its owner key before posting
        to the inbox, say), but the record belongs to the lease holder: a node
        that cannot read it (an old node during a rolling deploy that changed
        the State's schema) must not move a conversation another node serves.

        Raises:
            StaleWriteError: this node does not hold the conversation's lease;
                nothing was moved.
        """
        if self._leases.epoch(conversation_id) is None:
            raise StaleWriteError(
                f"conversation {conversation_id!r}: this node does not hold its lease, "
                "so it may not quarantine it; the record was left in place"
            )
        try:
            key: str = await self._inner.quarantine(conversation_id)
        except Exception as exc:
            if _is_database_error(exc):
                raise unavailable(f"conversation {conversation_id!r}", exc) from exc
            raise
        return key

    async def drop_timer(
        self, conversation_id: str, key: str, *, timer_id: str | None = None
    ) -> bool:
        """Remove a timer. A fired one (``timer_id``) is removed by the lease holder
        only, with its epoch: after a takeover the old owner's removal changes nothing.

        Raises:
            StaleWriteError: a fired timer, and this node does not hold the lease.
        """
        epoch = None
        if timer_id is not None:
            epoch = self._leases.epoch(conversation_id)
            if epoch is None:
                raise StaleWriteError(
                    f"conversation {conversation_id!r}: this node no longer holds its lease; "
                    "the fired timer was left for the owner"
                )
        try:
            dropped: bool = await self._inner.drop_timer(
                conversation_id, key, timer_id=timer_id, epoch=epoch
            )
        except Exception as exc:
            if _is_database_error(exc):
                raise unavailable(f"conversation {conversation_id!r}", exc) from exc
            raise
        return dropped

    async def drop_fired_timers(self, fired: list[tuple[str, str, str]]) -> list[bool]:
        """Remove fired timers, (conversation id, key, id) each, in one statement, each
        with the epoch of this node's lease on its conversation: one whose lease this
        node does not hold is left for the owner (False), and after a takeover the
        old owner's removal changes nothing."""
        epochs = [self._leases.epoch(cid) for cid, _, _ in fired]
        held = [(row, epoch) for row, epoch in zip(fired, epochs, strict=True) if epoch is not None]
        removed: list[bool] = []
        batch = getattr(self._inner, "drop_fired_timers", None)
        try:
            if held and batch is not None:
                marks = [epoch for _, epoch in held]
                removed = list(await batch([row for row, _ in held], epochs=marks))
            else:  # a fencing store of your own without the batch: one row at a time
                for (cid, key, timer_id), epoch in held:
                    drop = self._inner.drop_timer(cid, key, timer_id=timer_id, epoch=epoch)
                    removed.append(bool(await drop))
        except Exception as exc:
            if _is_database_error(exc):
                raise unavailable(f"{len(held)} fired timers", exc) from exc
            raise
        answers = iter(removed)
        return [epoch is not None and next(answers) for epoch in epochs]

    async def save(
        self,
        conversation_id: str,
        record: StoredConversation,
        *,
        expected_version: int | None,
        lifecycle: Lifecycle,
    ) -> int:
        epoch = self._leases.epoch(conversation_id)
        if epoch is None:
            raise StaleWriteError(
                f"conversation {conversation_id!r}: this node no longer holds its lease; "
                "the save was not made"
            )
        saved: int = await self._inner.save(
            conversation_id,
            record,
            expected_version=expected_version,
            lifecycle=lifecycle,
            epoch=epoch,
        )
        return saved


def _is_database_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("psycopg", "psycopg_pool")) or isinstance(exc, OSError)
