"""``LeaseTable``: who owns each conversation, as leases with an epoch in PostgreSQL."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ._lease_sql import (
    ACQUIRE,
    ADD_COLUMNS,
    CLAIM,
    CLEAR_RETRY,
    CREATE_INDEX,
    CREATE_TABLE,
    EARLIER,
    EPOCH_AFTER_STORE,
    FORGET,
    FORGET_RUNS,
    LOCK,
    LOOK,
    OWNER,
    RELEASE,
    RENEW,
    WORK,
    WORK_INBOX_ONLY,
    WORK_WITH_INBOX,
)
from ._pg import Clock, PgTable, check_conversation_id, check_ids, monotonic

if TYPE_CHECKING:
    from ._liveness import LockLife

__all__ = ["Fencing", "Lease", "LeaseTable", "Owner", "Renewal"]


@attrs.frozen
class Lease:
    """A conversation this node holds, and until when it may serve it.

    Attributes:
        conversation_id: the conversation.
        epoch: the fencing token: pass it to the store's ``fence`` and to
            every ``save(..., epoch=...)``.
        node_id: the holder.
        incarnation: the holder's run.
        deadline: the local monotonic time (the table's clock) after which the
            holder must stop serving unless a renewal confirmed the lease. It is
            measured from *before* the statement was sent, so it falls before
            the moment the database could give the lease to another node.
        lock: the advisory lock the row names (None: the row names none, and
            only the deadline counts); the lease also ends when it does.
    """

    conversation_id: str
    epoch: int
    node_id: str
    incarnation: str
    deadline: float
    lock: LockLife | None = attrs.field(default=None, eq=False)

    def expired(self, now: float) -> bool:
        """True once ``now`` (monotonic seconds) reached the deadline, or the
        lock the row names is no longer known to be held."""
        return now >= self.deadline or (self.lock is not None and now >= self.lock.until)


@attrs.frozen
class Renewal:
    """What a ``renew`` confirmed.

    Attributes:
        held: the conversations still held; serve them until ``deadline``.
        lost: those asked for and no longer held: stop serving them now.
        deadline: the new local monotonic deadline of every lease in ``held``.
    """

    held: frozenset[str]
    lost: frozenset[str]
    deadline: float

    def __contains__(self, conversation_id: object) -> bool:
        return conversation_id in self.held


@attrs.frozen
class Owner:
    """The live holder of a conversation's lease.

    Attributes:
        node_id: the holding node.
        incarnation: its run.
        epoch: the lease's epoch.
        lease_until: when the lease ends, on the database's clock.
        expires_in: seconds left, measured by the database when it answered.
    """

    node_id: str
    incarnation: str
    epoch: int
    lease_until: datetime
    expires_in: float


class Fencing(Protocol):
    """What ``acquire_fenced`` needs of a store (``PostgresStore`` has it)."""

    async def fence(self, conversation_id: str, epoch: int) -> int: ...


class LeaseTable(PgTable):
    """The lease table of the cluster, seen from one node's incarnation.

    A row per conversation that a node ever took: ``conversation_id``,
    ``node_id``, ``incarnation``, ``epoch`` and ``lease_until``. The table is
    created on first use. The statements are in ``docs/cluster.md``; each is a
    single statement reading only the database's clock (``now()``).

    Asyncio only: it uses psycopg's async API (see ``require_asyncio``).

    Args:
        dsn: a libpq connection string or URL.
        node_id: this node (``Cluster.node_id``).
        incarnation: this run of the node (``Cluster.incarnation``).
        ttl: the lease duration in seconds.
        table: the lease table, optionally schema-qualified.
        store_table: ``PostgresStore``'s table, which ``claim_expired`` joins
            for its ``unanswered`` flag.
        inbox_table: the ``Inbox``'s table, if any: ``claim_expired`` then also
            claims conversations with pending commands.
        max_connections: the pool's size.
        timeout: seconds to wait for a connection (when PostgreSQL is down, a
            call fails with ``psycopg_pool.PoolTimeout`` after it).
        clock: monotonic seconds, for the leases' local deadlines.

    Raises:
        ImportError: psycopg or psycopg_pool is missing.
        TypeError, ValueError: a bad argument (named in the message).
    """

    _kind = "LeaseTable"

    def __init__(
        self,
        dsn: str,
        *,
        node_id: str,
        incarnation: str,
        ttl: float = 10.0,
        table: str = "sessionvisor_leases",
        store_table: str = "sessionvisor_conversations",
        inbox_table: str | None = None,
        max_connections: int = 4,
        timeout: float = 5.0,
        clock: Clock = monotonic,
    ) -> None:
        super().__init__(dsn, table, max_connections=max_connections, timeout=timeout)
        from ._common import check_table_name

        self._store_parts = check_table_name("LeaseTable store", store_table)
        inbox_parts = (
            None if inbox_table is None else check_table_name("LeaseTable inbox", inbox_table)
        )
        for name, value in (("node_id", node_id), ("incarnation", incarnation)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"LeaseTable {name} must be a non-empty str, got {value!r}")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise TypeError(f"LeaseTable ttl must be a number of seconds, got {ttl!r}")
        if not math.isfinite(ttl) or ttl <= 0:
            raise ValueError(f"LeaseTable ttl must be a positive number of seconds, got {ttl}")
        self.node_id = node_id
        self.incarnation = incarnation
        self.ttl = float(ttl)
        self.clock = clock
        # Set by this node's ``Liveness``: the lock stamped on the rows it takes, and
        # the keys of crashed runs (their rows count as expired).
        self.lock: LockLife | None = None
        self.dead: frozenset[int] = frozenset()
        # The advisory locks of this table's nodes: (namespace, key) pairs.
        self.lock_namespace = zlib.crc32(".".join(self._parts).encode()) & 0x7FFFFFFF
        *schema, name = self._parts
        self.key_sequence = ".".join(f'"{part}"' for part in (*schema, name + "_lock_keys"))
        from psycopg import sql

        store = sql.Identifier(*self._store_parts)
        self._acquire = self._compose(ACQUIRE)
        self._renew = self._compose(RENEW)
        self._release = self._compose(RELEASE)
        self._owner = self._compose(OWNER)
        self._earlier = self._compose(EARLIER)
        self._forget = self._compose(FORGET, s=store)
        self._clear_retry = self._compose(CLEAR_RETRY)
        runs = self._ident("_runs")
        #: ``Liveness``'s statements, with this table's names.
        self.liveness_sql = {
            name: self._compose(text, r=runs)
            for name, text in (("lock", LOCK), ("look", LOOK), ("forget", FORGET_RUNS))
        }
        after_store = sql.SQL(EPOCH_AFTER_STORE).format(s=store)
        self._inbox_parts = inbox_parts
        self._claim_inbox_only = None
        if inbox_parts is None:
            work = sql.SQL(WORK).format(s=store)
        else:
            inbox = sql.Identifier(*inbox_parts)
            work = sql.SQL(WORK_WITH_INBOX).format(s=store, i=inbox)
            # Before any conversation was stored, the store's table may not
            # exist; the inbox's does (this table creates it).
            self._claim_inbox_only = self._compose(
                CLAIM,
                work=sql.SQL(WORK_INBOX_ONLY).format(i=inbox),
                first_epoch=sql.SQL("1"),
            )
        self._claim = self._compose(CLAIM, work=work, first_epoch=after_store)

    def __repr__(self) -> str:
        return f"LeaseTable(table={self._table!r}, node_id={self.node_id!r})"

    def _schema(self) -> list[Any]:
        from ._inbox import inbox_schema

        inbox = [] if self._inbox_parts is None else inbox_schema(self._inbox_parts)
        keys, runs = self._ident("_lock_keys"), self._ident("_runs")
        return [
            *inbox,
            self._compose(CREATE_TABLE),
            *(self._compose(statement, k=keys, r=runs) for statement in ADD_COLUMNS),
            self._compose(CREATE_INDEX, i=self._index_name("_until")),
        ]

    def _index_name(self, suffix: str) -> Any:
        from psycopg import sql

        return sql.Identifier(self._parts[-1] + suffix)

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {"node": self.node_id, "inc": self.incarnation, "ttl": self.ttl, **extra}

    def _stamp(self, now: float) -> tuple[LockLife | None, dict[str, Any]]:
        """The lock to stamp on the rows taken now (None while it is not known held),
        and the statement's lock parameters."""
        lock = self.lock
        if lock is not None and now >= lock.until:
            lock = None
        return lock, {"key": None if lock is None else lock.key, "dead": sorted(self.dead)}

    async def acquire(self, conversation_id: str) -> Lease | None:
        """Take the conversation's lease, with a new epoch.

        Succeeds when nobody holds it, when its lease expired, or when this
        node_id holds it with this or an earlier incarnation.

        Returns:
            The lease, or None when another live owner holds it (``owner``
            says who).

        Raises:
            TypeError, ValueError: a bad conversation id.
            psycopg.Error: the database failed.
        """
        check_conversation_id(conversation_id)
        for _ in range(2):
            started = self.clock()
            lock, stamp = self._stamp(started)
            rows = await self._fetch(self._acquire, self._params(cid=conversation_id, **stamp))
            if not rows:
                return None
            lease = Lease(
                conversation_id=conversation_id,
                epoch=int(rows[0][0]),
                node_id=self.node_id,
                incarnation=self.incarnation,
                deadline=started + self.ttl,
                lock=lock,
            )
            if lock is None or self.clock() < lock.until:
                break
            # The lock was lost while the statement ran: the row names a key that
            # is gone; take the row again (it is this run's) with the lock of now.
        return lease

    async def acquire_fenced(self, conversation_id: str, store: Fencing) -> Lease | None:
        """Take the lease, then fence the store with its epoch, in that order.

        After this returns a lease, every save with an older epoch (the
        previous owner's) fails with ``StaleWriteError``, and a ``load`` sees
        every write that got in before: load the conversation only now.

        Returns:
            The lease; None when another owner holds the lease, when a newer
            owner fenced the store already, or when the lease's local deadline
            passed while fencing (the caller may try again).

        Raises:
            TypeError, ValueError: a bad conversation id.
            psycopg.Error: the database failed.
        """
        lease = await self.acquire(conversation_id)
        if lease is None:
            return None
        stored = await store.fence(conversation_id, lease.epoch)
        if stored > lease.epoch or lease.expired(self.clock()):
            return None
        return lease

    async def renew(self, conversation_ids: Iterable[str]) -> Renewal:
        """Extend, in one statement, every lease of ``conversation_ids`` that
        this incarnation holds.

        A lease that expired but that nobody took since is renewed too: its
        epoch is unchanged, so no other writer can exist. Its holder must
        still have stopped serving at the old deadline.

        Returns:
            The ``Renewal``: the ids still held (with the new deadline) and the
            ids lost.

        Raises:
            TypeError, ValueError: a bad id, or a single str instead of ids.
            psycopg.Error: the database failed; the caller must treat every
                lease as unconfirmed (serve until the old deadlines only).
        """
        ids = check_ids(conversation_ids)
        started = self.clock()
        rows = await self._fetch(self._renew, self._params(ids=ids), reserved=True) if ids else []
        held = frozenset(row[0] for row in rows)
        return Renewal(held=held, lost=frozenset(ids) - held, deadline=started + self.ttl)

    async def release(self, conversation_ids: Iterable[str]) -> set[str]:
        """End this incarnation's leases now (kept as expired rows, epoch intact).

        Returns:
            The ids that were held and are released.

        Raises:
            TypeError, ValueError: a bad id.
            psycopg.Error: the database failed.
        """
        ids = check_ids(conversation_ids)
        rows = await self._fetch(self._release, self._params(ids=ids)) if ids else []
        return {row[0] for row in rows}

    async def forget(self, conversation_id: str) -> bool:
        """Delete this run's first lease (epoch 1) of a conversation that has
        nothing stored, and the store's placeholder; False (nothing deleted)
        otherwise: ``release`` it then.

        Raises:
            psycopg.Error: the database failed.
        """
        check_conversation_id(conversation_id)
        return bool(await self._fetch(self._forget, self._params(cid=conversation_id)))

    async def earlier_incarnations(self) -> list[str]:
        """The conversations whose live lease an earlier run of this node holds.

        ``acquire`` takes each back at once (no waiting out the TTL).

        Raises:
            psycopg.Error: the database failed.
        """
        return [row[0] for row in await self._fetch(self._earlier, self._params())]

    async def owner(self, conversation_id: str) -> Owner | None:
        """The live holder of the conversation's lease, or None when no one holds one.

        Raises:
            TypeError, ValueError: a bad conversation id.
            psycopg.Error: the database failed.
        """
        check_conversation_id(conversation_id)
        rows = await self._fetch(self._owner, (conversation_id,))
        if not rows:
            return None
        node_id, incarnation, epoch, until, left = rows[0]
        return Owner(
            node_id=node_id,
            incarnation=incarnation,
            epoch=int(epoch),
            lease_until=until,
            expires_in=float(left),
        )

    async def claim_expired(
        self, limit: int = 100, *, first_retry: float = 2.0, max_retry: float = 120.0
    ) -> list[Lease]:
        """Take the expired leases of conversations with unanswered work (the sweeper).

        Expired leases (or leases of a crashed run, ``dead``) whose conversation
        was saved mid-turn or with messages to run (the store's ``unanswered``
        flag and a ``turn_start`` or ``queued`` save: a held queue or a question
        waiting for a human is not work) or (with ``inbox_table``) has pending
        inbox commands, and such conversations that never had a lease, up to
        ``limit``; rows another node's sweeper is claiming are skipped, not
        waited for. Each claim puts the conversation's next claim off
        (``first_retry`` seconds, doubling per claim up to ``max_retry``) until
        ``clear_retry`` says the wake worked, so a conversation that cannot
        wake is retried ever more rarely, by every node. The caller must
        ``fence`` each (as ``acquire_fenced`` does) before loading it.

        Returns:
            The new leases (epoch incremented), in no particular order.

        Raises:
            TypeError, ValueError: ``limit`` is not a positive int.
            psycopg.Error: the database failed.
        """
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int, got {limit!r}")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        started = self.clock()
        lock, stamp = self._stamp(started)
        params = self._params(limit=limit, first=first_retry, most=max_retry, **stamp)
        try:
            rows = await self._fetch(self._claim, params)
        except self._psycopg.errors.UndefinedTable:
            # No store table: nothing is stored; only the inbox may hold work.
            if self._claim_inbox_only is None:
                return []
            rows = await self._fetch(self._claim_inbox_only, params)
        return [
            Lease(
                conversation_id=cid,
                epoch=int(epoch),
                node_id=self.node_id,
                incarnation=self.incarnation,
                deadline=started + self.ttl,
                lock=lock,
            )
            for cid, epoch in rows
        ]

    async def clear_retry(self, conversation_id: str, epoch: int) -> None:
        """The wake of a claimed lease (``epoch``) worked: its next claim need not wait.

        Raises:
            psycopg.Error: the database failed.
        """
        await self._fetch(self._clear_retry, {"cid": conversation_id, "epoch": epoch})
