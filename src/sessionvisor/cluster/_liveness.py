"""``Liveness``: each run of a node holds an advisory lock, so a crash is seen at once.

A process that dies (``kill -9``, a crash, a lost machine whose kernel still
answers) has its PostgreSQL connections closed, and PostgreSQL drops the
session-level advisory locks they held. So each run of a node takes, on a
connection of its own, the lock ``(namespace, key)``: the namespace is derived
from the lease table's name, the key is drawn from a sequence and never
reused, and the statement that takes the lock also lists the key in a small
table of runs (``<lease table>_runs``). Every lease row the run takes names the
key (``lock_key``), and every node looks at the listed keys and which of them
are held (one query joining that table and ``pg_locks`` every ``_EVERY``
seconds, on the same connection). A listed key that is not held marks the rows
that name it as expired: the sweeper (woken at once) and ``acquire`` take them
without waiting for ``lease_until``. A paused or partitioned process keeps its
connection, and its lock, so its leases run their TTL as before.

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
  query that first found it listed and not held. It was held before its row
  could be read, so it was dropped before that query ended, and the owner's
  last confirmation began before the lock was dropped: with clocks that run at
  the same rate (what the TTL already assumes), the owner stopped before anyone
  takes over.

A crashed owner's conversations are thus taken within about ``_EVERY +
_GRACE`` seconds (plus the claim), whatever the TTL; a node started after the
crash sees it too, since the key stays listed. A key gone for longer than any
lease can last without renewal (``2 * ttl + _GRACE``) is deleted from the list.
A node looks only while it holds its own lock; when none does, leases run their
TTL. A lease taken in the instant a lock is lost is taken again with the lock
of now (``LeaseTable.acquire``), so no row names a lock given up before it.

The looking runs on a thread of its own with a blocking connection, so a busy
event loop (a long start-up, a large save) does not stop the confirmations; the
event loop's side only enforces the deadline (``Liveness.run``) and hands the
news to the node.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from typing import Any

import anyio
import structlog

from ._common import import_psycopg
from ._leases import LeaseTable

__all__: list[str] = ["Liveness", "LockLife"]

_log = structlog.get_logger("sessionvisor")

_EVERY = 0.2  # seconds between two looks at pg_locks (each confirms this run's lock)
_GRACE = 0.8  # seconds a confirmation lasts, and a missing key waits before it counts


class LockLife:
    """The advisory lock of this run of a node: its key, and until when (local
    monotonic seconds) it is known to be held.

    ``until`` moves forward with each confirmation, and is set to minus infinity
    for good once the lock is lost. Every lease whose row names the key is valid
    only until then (``Lease.expired``), since from then on others may take it.
    """

    __slots__ = ("key", "until")

    def __init__(self, key: int, until: float) -> None:
        self.key = key
        self.until = until

    def __repr__(self) -> str:
        return f"LockLife(key={self.key})"


class Liveness:
    """Holds this run's advisory lock and tells the lease table which keys died.

    ``run`` (one of the node's loops) starts the thread that keeps the lock
    (taking a new one after a loss) and sets ``table.lock`` and ``table.dead``;
    on the event loop it calls ``on_lost(lock)`` once the lock is lost or its
    confirmation ran out (the node drops the leases that name it) and
    ``on_dead()`` when a key of another run was found dead (the node sweeps).
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
        self._sql = table.liveness_sql
        self._missing: dict[int, float] = {}  # key -> when it was first found not held
        self._guard = threading.Lock()  # a lock's ``until``: confirmed, or given up
        self._lost: list[LockLife] = []  # given up by the thread, for the event loop
        self._dead_told: frozenset[int] = frozenset()
        self._nudge: Callable[[], None] = lambda: None
        self._tried = False  # the thread tried to take a lock once
        self.first_try = anyio.Event()  # set once the first lock was taken (or failed)
        self.losses = 0

    async def run(self) -> None:
        """Start the thread; enforce the lock's deadline and pass the news on, until
        cancelled (which stops the thread and so releases the lock)."""
        loop = asyncio.get_running_loop()
        woken = anyio.Event()

        def nudge() -> None:
            try:
                loop.call_soon_threadsafe(lambda: woken.set())
            except RuntimeError:  # the event loop is closed: nobody to tell
                pass

        # Each run its own thread and stop flag: a thread that has not noticed its
        # stop yet never runs on beside a new one's lock.
        stop = threading.Event()
        self._nudge = nudge
        thread = threading.Thread(
            target=self._keep, args=(stop,), name="sessionvisor-liveness", daemon=True
        )
        thread.start()
        try:
            while True:
                lock = self._table.lock
                wait = self._every
                if lock is not None:
                    left = lock.until - self._clock()
                    if left <= 0:
                        self._give_up(lock)
                    else:
                        wait = min(wait, left)
                with anyio.move_on_after(wait):
                    await woken.wait()
                woken = anyio.Event()
                self._deliver()
        finally:
            stop.set()
            self._nudge = lambda: None

    def _deliver(self) -> None:
        """On the event loop: the first try, lost locks and dead keys, to the node."""
        if self._tried:
            self.first_try.set()
        while self._lost:
            self.losses += 1
            self._on_lost(self._lost.pop(0))
        dead = self._table.dead
        if dead - self._dead_told:
            _log.info("cluster_liveness_dead_found", keys=sorted(dead - self._dead_told)[:20])
            self._on_dead()
        self._dead_told = dead

    def _give_up(self, lock: LockLife) -> None:
        """The lock's confirmation ran out (or it was lost): its leases end now, for
        good; the thread drops the connection and takes a new lock."""
        with self._guard:
            if lock.until == -math.inf:
                return
            lock.until = -math.inf
            if self._table.lock is lock:
                self._table.lock = None
            self._lost.append(lock)
        self._nudge()

    # -- the thread ----------------------------------------------------------------

    def _keep(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            lock: list[LockLife] = []
            try:
                self._hold(lock, stop)
            except Exception as exc:
                # A lock held then lost is news; failing to take one again is not.
                failures = 1 if lock else failures + 1
                log = _log.warning if failures == 1 else _log.debug
                log("cluster_liveness_lock_lost", error=repr(exc)[:300])
            self._tried = True
            if lock:
                self._give_up(lock[0])
            self._nudge()
            stop.wait(min(0.2 * 2 ** min(failures, 5), 5.0))

    def _hold(self, held: list[LockLife], stop: threading.Event) -> None:
        seconds = max(2, int(self._grace * 5))
        conn = self._psycopg.connect(
            self._dsn,
            autocommit=True,
            connect_timeout=seconds,
            # A connection whose packets are dropped fails within seconds instead of
            # blocking the thread for the kernel's retransmission time.
            tcp_user_timeout=seconds * 1000,
            keepalives=1,
            keepalives_idle=1,
            keepalives_interval=1,
            keepalives_count=seconds,
        )
        try:
            table = self._table
            params = {"seq": table.key_sequence, "ns": table.lock_namespace}
            started = self._clock()
            rows: list[Any] = []
            while not rows:  # a key someone holds by hand is skipped
                rows = conn.execute(
                    self._sql["lock"], {**params, "node": table.node_id, "inc": table.incarnation}
                ).fetchall()
            lock = LockLife(int(rows[0][0]), started + self._grace)
            held.append(lock)
            table.lock = lock
            self._tried = True
            self._nudge()
            _log.info("cluster_liveness_locked", key=lock.key)
            next_look = self._clock()
            while not stop.is_set():
                now = self._clock()
                if now >= next_look:
                    started, next_look = now, now + self._every
                    listed = {
                        int(key): bool(on)
                        for key, on in conn.execute(self._sql["look"], params).fetchall()
                    }
                    if not listed.get(lock.key):
                        raise RuntimeError("this run's advisory lock is no longer held")
                    with self._guard:
                        if lock.until == -math.inf:
                            raise RuntimeError("the lock's confirmation came too late")
                        lock.until = started + self._grace
                    self._note(conn, listed, self._clock())
                now = self._clock()
                self._publish(now)
                # Look again on time, or earlier when a missing key comes due.
                due = [t + self._grace for t in self._missing.values() if t + self._grace > now]
                stop.wait(max(0.0, min([next_look, *due]) - now))
        finally:
            conn.close()

    def _note(self, conn: Any, listed: dict[int, bool], now: float) -> None:
        """Since when each listed key is not held (the end of the query that found
        it so); the keys gone for long are deleted from the list."""
        self._missing = {k: self._missing.get(k, now) for k, held in listed.items() if not held}
        old = [k for k, since in self._missing.items() if now - since > self._forget_after]
        if old:
            conn.execute(self._sql["forget"], {"keys": old})

    def _publish(self, now: float) -> None:
        """The keys not held for ``grace``: dead, their leases expired."""
        dead = frozenset(k for k, since in self._missing.items() if now - since >= self._grace)
        if dead != self._table.dead:
            self._table.dead = dead
            self._nudge()
