"""One node of the cluster: the runtime a ``SessionSupervisor`` runs on, and its loops.

``ClusterNode`` implements the supervisor's ``Runtime`` Protocol; the
supervisor gets it from ``Cluster.build_runtime`` when given a ``Cluster``. Its
parts are the local ones, composed: the registry takes the lease before a
start and gives it up when the session ends (the registry's hooks), the
mailbox posts to the owner (``ClusterMailbox`` around the local mailbox), the
bus carries events through Redis (``ClusterBus`` around the local bus), and
the store is fenced with the lease's epoch. While the supervisor is open it
runs:

- the renewal of its leases (``Leases.run``);
- the liveness (``Liveness``): this run's advisory lock, and the keys of runs
  that crashed, whose leases count as expired at once;
- the sweeper: every ``renew_every``, and at once when a run was found dead, it
  claims expired leases of conversations with unanswered work or pending
  commands, and serves them here;
- the listeners: Redis wake-ups for this node and the inbox's LISTEN/NOTIFY
  (either is enough), and a slow poll of the inbox behind both;
- the event forwarder and the stream pumps (``ClusterBus``).

On start it takes back at once what an earlier run of the same ``node_id``
held. On close (after the supervisor's drain saved every session) it gives up
its leases, so other nodes take over without waiting out the TTL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import structlog

from .._errors import StaleWriteError
from ..sessions import ClusterMetrics
from ..sessions.spi import (
    LocalMailbox,
    LocalRegistry,
    Mailbox,
    Quotas,
    RuntimeStats,
    install_quotas,
)
from ._commands import ClusterMailbox
from ._common import require_asyncio
from ._config import Cluster
from ._leases import Lease
from ._live import ClusterBus
from ._liveness import Liveness, LockLife
from ._ownership import FencedStore, Leases
from ._quotas import ClusterQuotas
from ._serving import InboxServer

if TYPE_CHECKING:
    from ..state import FencingStore

__all__: list[str] = ["ClusterNode"]

_log = structlog.get_logger("sessionvisor")
_POLL_EVERY = 5.0  # seconds between inbox polls (behind the wake-ups and NOTIFY)
_CLAIM_LIMIT = 50  # leases one sweep claims (it sweeps again at once when it got that many)


class ClusterNode:
    """The cluster side of one supervisor (see the module docstring)."""

    #: The supervisor's timer loop polls the store this often (seconds): timers are
    #: scheduled on every node, and a due timer whose conversation has no live owner
    #: is fired (and the conversation woken) by whichever node's loop finds it first.
    timer_poll = 0.5

    def __init__(
        self,
        cluster: Cluster,
        store: FencingStore,
        *,
        dsn: str,
        store_table: str,
        stats: RuntimeStats,
    ) -> None:
        self.cluster = cluster
        self._inner_store = store
        self._table = cluster.lease_table_for(dsn, store_table=store_table)
        self._inbox = cluster.inbox_for(dsn)
        self._liveness = Liveness(
            dsn, self._table, on_lost=self._lock_lost, on_dead=self._sweep_soon
        )
        self._sweep_now = anyio.Event()
        self._streams = cluster.event_streams()
        self._wakeups = cluster.wakeups()
        self.leases = Leases(
            self._table,
            store,
            self._streams,
            renew_every=cluster.renew_every,
            on_lost=self._lost,
        )
        self._store = FencedStore(store, self.leases)
        self._registry = LocalRegistry(claim=self.leases.take, release=self._release)
        self._bus = ClusterBus(
            self._streams,
            epoch_of=self.leases.epoch,
            serving=lambda cid: self._registry.live(cid) is not None,
            on_stale=lambda cid: self._lost(cid, "a newer owner's events are in its stream"),
            stats=stats,
        )
        self._stats = stats
        self._mailbox: ClusterMailbox | None = None
        self._quotas: ClusterQuotas | None = None
        self._server: InboxServer | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._draining = False
        self.takeovers = 0
        self.lost = 0

    # -- the Runtime Protocol ----------------------------------------------------------

    @property
    def store(self) -> FencedStore:
        return self._store

    @property
    def registry(self) -> LocalRegistry:
        return self._registry

    @property
    def bus(self) -> ClusterBus:
        return self._bus

    def mailbox(self, local: LocalMailbox) -> Mailbox:
        self._server = InboxServer(
            local,
            registry=self._registry,
            starter=local.starter,
            inbox=self._inbox,
            release=self._release,
            stats=self._stats,
        )
        self._mailbox = ClusterMailbox(
            local,
            server=self._server,
            registry=self._registry,
            starter=local.starter,
            leases=self.leases,
            inbox=self._inbox,
            wakeups=self._wakeups,
            owner_of=local.owner_of,
            check_open=local.check_open,
            spawn=self._spawn,
            recent_for=self.cluster.renew_every,
            header=getattr(self._inner_store, "load_header", None),
        )
        return install_quotas(self._mailbox, local, self._build_quotas)

    def _build_quotas(self, running: int | None, per_minute: int | None, _clock: Any) -> Quotas:
        """The owners' quotas, counted in Redis (``_quotas``); their refresh runs in ``open``."""
        self._quotas = ClusterQuotas.of(self.cluster, running, per_minute, spawn=self._spawn)
        return self._quotas

    def _release(self, conversation_id: str) -> None:
        """Give the lease up soon: the session ended (or never started) here."""
        # A refused start published nothing: its first lease leaves nothing behind.
        forget = not self._bus.spoke(conversation_id)
        if self._tg is not None:
            self.leases.release_soon(conversation_id, self._spawn, forget=forget)

    def _spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        if self._tg is not None:
            self._tg.start_soon(fn, *args)

    # -- life --------------------------------------------------------------------------

    async def open(
        self,
        tasks: anyio.abc.TaskGroup,
        *,
        recover: Callable[[str], Awaitable[bool]] | None,
    ) -> None:
        """Create the tables, take back an earlier run's leases, start the loops.

        ``recover`` is not used: the sweepers of all nodes wake the conversations
        with unanswered work, under leases.
        """
        require_asyncio("the cluster mode")
        tg = self._tg = tasks
        await self._table.__aenter__()
        await self._inbox.__aenter__()

        def keep(loop: Callable[[], Coroutine[Any, Any, Any]]) -> None:
            tg.start_soon(_keep_running, loop)

        self._bus.start(keep)
        if self._quotas is not None:
            keep(self._quotas.run)
        tg.start_soon(_keep_running, self._liveness.run)
        with anyio.move_on_after(5.0):
            # Leases taken before the lock name no lock (they live by their TTL).
            await self._liveness.first_try.wait()
        for loop in (
            self.leases.run,
            self._sweep,
            self._listen_redis,
            self._listen_postgres,
            self._poll,
        ):
            tg.start_soon(_keep_running, loop)
        earlier = await self._table.earlier_incarnations()
        if earlier:
            _log.info("cluster_taking_back", conversations=len(earlier))
        for cid in earlier:
            tg.start_soon(self._serve, cid, True)
        _log.info(
            "cluster_node_started",
            node_id=self.cluster.node_id,
            incarnation=self.cluster.incarnation,
            lease_ttl=self.cluster.lease_ttl,
        )

    def begin_drain(self) -> None:
        """Claim nothing more: this node is leaving."""
        self._draining = True

    async def close(self) -> None:
        """Give up every lease (the sessions saved already) and close the connections."""
        self._draining = True
        with anyio.CancelScope(shield=True):
            await self._bus.flush(2.0)  # the sessions' last events, for the other nodes
            with anyio.move_on_after(5.0):
                await self.leases.wait_releases()
            await self.leases.release_all()
            for closing in (self._table, self._inbox, self._streams, self._wakeups):
                try:
                    await closing.aclose()
                except Exception as exc:
                    _log.warning("cluster_close_failed", what=repr(closing), error=repr(exc))
        _log.info("cluster_node_left", node_id=self.cluster.node_id)

    def metrics(self) -> ClusterMetrics:
        assert self._mailbox is not None and self._server is not None
        return ClusterMetrics(
            leases_held=len(self.leases.held),
            takeovers=self.takeovers,
            leases_lost=self.lost,
            commands_posted=self._mailbox.posted,
            commands_applied=self._server.applied,
            events_not_forwarded=self._bus.dropped,
        )

    # -- losing a conversation -----------------------------------------------------------

    def _lost(self, conversation_id: str, why: str) -> None:
        self.lost += 1
        self.leases.held.pop(conversation_id, None)
        self._bus.spoke(conversation_id)  # that lease is over
        actor = self._registry.entry(conversation_id)
        if actor is not None:
            actor.superseded(StaleWriteError(f"conversation {conversation_id!r}: {why}"))

    def _lock_lost(self, lock: LockLife) -> None:
        """This run's advisory lock is gone: other nodes may take, after their grace,
        every lease whose row names it, so stop serving those now."""
        if self._draining:
            return
        for cid, lease in list(self.leases.held.items()):
            if lease.lock is lock:
                self._lost(cid, "its node's advisory lock was lost")

    def _sweep_soon(self) -> None:
        self._sweep_now.set()

    # -- the loops -------------------------------------------------------------------------

    async def _serve(self, cid: str, take: bool) -> None:
        assert self._server is not None
        await self._server.serve(cid, take=take)

    async def _sweep(self) -> None:
        store = self._inner_store
        full = False
        while True:
            if not full:
                with anyio.move_on_after(self.cluster.renew_every):
                    await self._sweep_now.wait()
            self._sweep_now = anyio.Event()
            if self._draining:
                return
            try:
                claimed = await self._table.claim_expired(limit=_CLAIM_LIMIT)
            except Exception as exc:
                _log.warning("cluster_sweep_failed", error=repr(exc))
                full = False
                continue
            full = len(claimed) >= _CLAIM_LIMIT
            for lease in claimed:
                try:
                    stored_epoch = await store.fence(lease.conversation_id, lease.epoch)
                except Exception as exc:
                    _log.warning("cluster_sweep_failed", error=repr(exc))
                    continue
                if stored_epoch > lease.epoch:
                    continue  # someone newer fenced it already
                await self.leases.adopt(lease)
                self.takeovers += 1
                _log.info(
                    "cluster_conversation_claimed",
                    conversation_id=lease.conversation_id,
                    epoch=lease.epoch,
                )
                self._spawn(self._serve_claimed, lease)

    async def _serve_claimed(self, lease: Lease) -> None:
        """Wake a claimed conversation; once that worked, its next claim need not wait
        (each claim put it off, in case the wake fails: see ``claim_expired``)."""
        assert self._server is not None
        cid = lease.conversation_id
        await self._server.serve(cid, take=True)
        if not self._server.wake_failed(cid):
            try:
                await self._table.clear_retry(cid, lease.epoch)
            except Exception as exc:  # it only waits longer before its next claim
                _log.info("cluster_retry_not_cleared", conversation_id=cid, error=repr(exc))

    async def _listen_redis(self) -> None:
        while True:
            try:
                async with self._wakeups.listen(self.cluster.node_id) as listener:
                    while True:
                        for cid in await listener.wait(30.0):
                            # Addressed to this node: serve it, taking it back if it
                            # was let go meanwhile (the poster thought it was here).
                            self._spawn(self._serve, cid, True)
            except Exception as exc:
                _log.info("cluster_wakeups_unavailable", error=type(exc).__name__)
                await anyio.sleep(1.0)

    async def _listen_postgres(self) -> None:
        while True:
            try:
                async with self._inbox.listen() as listener:
                    while True:
                        for cid in await listener.wait(30.0):
                            if self._registry.live(cid) is not None:
                                self._spawn(self._serve, cid, False)
            except Exception as exc:
                _log.info("cluster_notify_unavailable", error=type(exc).__name__)
                await anyio.sleep(1.0)

    async def _poll(self) -> None:
        while True:
            await anyio.sleep(_POLL_EVERY)
            try:
                pending = await self._inbox.pending_conversations()
            except Exception:
                continue
            for cid in pending:
                if self._registry.live(cid) is not None:
                    self._spawn(self._serve, cid, False)


async def _keep_running(loop: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """Run one of the node's loops; a bug in it is logged and the loop starts again
    instead of taking the supervisor (and every session of this node) down."""
    while True:
        try:
            await loop()
            return
        except Exception as exc:
            _log.error("cluster_loop_failed", loop=loop.__qualname__, error=repr(exc))
            await anyio.sleep(1.0)
