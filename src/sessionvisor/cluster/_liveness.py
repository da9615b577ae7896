"""``Liveness``: each run of a node holds an advisory lock, so a crash is seen at once.

A process that dies (``kill -9``, a crash, a lost machine whose kernel still
answers) has its PostgreSQL connections closed, and PostgreSQL drops the
session-level advisory locks they held. So each run of a node takes, on a
connection of its own, the lock ``(namespace, key)``: the namespace is derived
from the lease table's name, the key is drawn once from a sequence and never
reused. Every lease row the run takes names the key (``lock_key``), and every
node watches which keys are held (one query on ``pg_locks`` every
``_EVERY`` seconds, on the same connection). A key that was held and is gone
marks the rows that name it as expired: the sweeper (woken at once) and
``acquire`` take them without waiting for ``lease_until``. A paused or
partitioned process keeps its connection, and its lock, so its leases run
their TTL as before.

Why it is safe: a lock can also vanish while its process lives (the connection
was reset, an administrator ended the backend, the server restarted, a
firewall dropped the flow). Two rules keep a live owner from serving past the
moment another node may take its conversations:

- The owner knows its lock held only ``_GRACE`` seconds past the *start* of
  the last query that saw it in ``pg_locks`` (``LockLife.until``). Every lease
  whose row names the key expires then (``Lease.expired``: saves are refused
  and ``Leases.take`` takes the lease again); if no query confirms it in time,
  the lock is given up for good (the connection is closed, the key is never
  used again), every lease naming it is dropped and its session stopped as
  superseded, and a new lock is taken with a new key. Leases taken while no
  lock is held name none and live by their TTL only.
- Another node counts a key dead only ``_GRACE`` seconds after the *end* of the
  query that first found it missing. The lock was dropped before that query
  ended, and the owner's last confirmation began before the lock was dropped,
  so, with clocks that run at the same rate (what the TTL already assumes), the
  owner stopped before anyone takes over.

A crashed owner's conversations are thus taken within about ``_EVERY +
_GRACE`` seconds (plus the claim), whatever the TTL. Keys are remembered only
by the nodes that saw them held: a node started after the crash waits for the
TTL, as do all nodes when none of them was watching (their own locks were
down).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import anyio
import structlog

from ._common import import_psycopg
from ._lease_sql import LIVE_KEYS, LOCK, NEXT_KEY
from ._leases import LeaseTable, LockLife

__all__: list[str] = ["Liveness"]

_log = structlog.get_logger("sessionvisor")

_EVERY = 0.2  # seconds between two looks at pg_locks (each confirms this run's lock)
_GRACE = 0.8  # seconds a confirmation lasts, and a missing key waits before it counts


class Liveness:
    """Holds this run's advisory lock and tells the lease table which keys died.

    ``run`` (one of the node's loops) keeps the lock (taking a new one after a
    loss), sets ``table.lock`` and ``table.dead``, calls ``on_lost(lock)`` when
    the lock is lost (the node drops the leases that name it) and ``on_dead()``
    when a key of another run was found dead (the node sweeps at once).
    """

    def __init__(
        self,
        dsn: str,
        table: LeaseTable,
        *,
        on_lost: Callable[[LockLife], None],
        on_dead: Callable[[], None],
        every: float = _EVERY,
        grace: float = _GRACE,
        forget_after: float | None = None,
    ) -> None:
        self._psycopg, _ = import_psycopg()
        self._dsn = dsn
        self._table = table
        self._on_lost = on_lost
        self._on_dead = on_dead
        self._every = every
        self._grace = grace
        # A key's rows all expired by then: it need not be passed around any more.
        self._forget_after = 2 * table.ttl + grace if forget_after is None else forget_after
        self._clock = table.clock
        self._seen: set[int] = set()  # keys seen held
        self._missing: dict[int, float] = {}  # key -> when it was first found missing
        self.first_try = anyio.Event()  # set once the first lock was taken (or failed)
        self.losses = 0

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self._hold()
            except Exception as exc:
                failures += 1
                log = _log.warning if failures == 1 else _log.debug
                log("cluster_liveness_lock_lost", error=repr(exc)[:300])
            finally:
                self.first_try.set()
                lock, self._table.lock = self._table.lock, None
                if lock is not None:
                    lock.until = -math.inf
                    self.losses += 1
                    self._on_lost(lock)
            await anyio.sleep(min(0.2 * 2 ** min(failures, 5), 5.0))

    async def _hold(self) -> None:
        namespace = self._table.lock_namespace
        conn = await self._psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, connect_timeout=max(2, int(self._grace * 5))
        )
        try:
            started = self._clock()
            with anyio.fail_after(self._grace * 5):
                key = None
                while key is None:
                    cur = await conn.execute(NEXT_KEY, {"seq": self._table.key_sequence})
                    drawn = int((await cur.fetchall())[0][0])
                    cur = await conn.execute(LOCK, {"ns": namespace, "key": drawn})
                    key = drawn if (await cur.fetchall())[0][0] else None
            lock = LockLife(key, started + self._grace)
            self._table.lock = lock
            self.first_try.set()
            _log.info("cluster_liveness_locked", key=key)
            next_look = self._clock()
            while True:
                now = self._clock()
                if now >= next_look:
                    started = now
                    next_look = started + self._every
                    present = await self._look(conn, lock, namespace)
                    if lock.key not in present:
                        raise RuntimeError("this run's advisory lock is no longer held")
                    lock.until = started + self._grace
                    self._note(present, self._clock())
                self._publish(self._clock())
                wake = min([next_look, *(since + self._grace for since in self._missing.values())])
                await anyio.sleep(max(0.0, min(wake, lock.until) - self._clock()))
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()

    async def _look(self, conn: Any, lock: LockLife, namespace: int) -> set[int]:
        """The keys held now; gives up (raises) when the lock's confirmation runs out."""
        left = lock.until - self._clock()
        with anyio.move_on_after(max(0.0, left)) as scope:
            cur = await conn.execute(LIVE_KEYS, {"ns": namespace})
            rows = await cur.fetchall()
        if scope.cancelled_caught:
            raise TimeoutError(f"pg_locks did not answer within {max(0.0, left):.2f} s")
        return {int(row[0]) for row in rows}

    def _note(self, present: set[int], now: float) -> None:
        """Keys seen held, and since when the others are missing (from the end of
        the query that found them gone)."""
        for key in self._seen - present:
            self._missing.setdefault(key, now)
        self._seen = present
        for key, since in list(self._missing.items()):
            if now - since > self._forget_after:
                del self._missing[key]

    def _publish(self, now: float) -> None:
        dead = frozenset(k for k, since in self._missing.items() if now - since >= self._grace)
        if dead != self._table.dead:
            grown = dead - self._table.dead
            self._table.dead = dead
            if grown:
                _log.info("cluster_liveness_dead_found", keys=sorted(grown)[:20])
                self._on_dead()
