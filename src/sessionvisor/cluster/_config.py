"""``Cluster``: the validated settings of one node of a cluster."""

from __future__ import annotations

import math
import unicodedata
from typing import TYPE_CHECKING, Any

from ._common import check_table_name, default_node_id, new_incarnation
from ._events import EventStreams
from ._inbox import Inbox
from ._leases import LeaseTable
from ._wakeups import Wakeups

if TYPE_CHECKING:
    from ..sessions.spi import RuntimeStats
    from ..state import StateStore
    from ._node import ClusterNode

__all__ = ["Cluster"]

_INCARNATION: tuple[int, str] | None = None


def _process_incarnation() -> str:
    """One incarnation per process (a forked child gets its own)."""
    import os

    global _INCARNATION
    pid = os.getpid()
    if _INCARNATION is None or _INCARNATION[0] != pid:
        _INCARNATION = (pid, new_incarnation())
    return _INCARNATION[1]


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Cluster {name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"Cluster {name} must be a positive number of seconds, got {value}")
    return float(value)


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Cluster {name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"Cluster {name} must be at least 1, got {value}")
    return value


class Cluster:
    """How this process joins a cluster: the Redis URL, its identity, the lease timing.

    PostgreSQL (the store's database) is the authority; Redis carries the
    live events and the wake-ups. The data layer is built
    (``LeaseTable``, ``Inbox``, ``EventStreams``, ``Wakeups``, made by the
    methods below); ``SessionSupervisor`` does not accept a cluster yet.

    Args:
        redis_url: ``redis://host:port/db`` (or ``rediss://``, ``unix://``).
        node_id: this node's name, stable across its restarts when given (so a
            restart takes its leases back at once); default ``<hostname>-<pid>``.
        lease_ttl: seconds a lease lasts without renewal.
        renew_every: seconds between renewals; default ``lease_ttl / 4``; at
            most ``lease_ttl / 3`` (at least three renewals per TTL).
        lease_table, inbox_table: PostgreSQL table names, optionally
            schema-qualified.
        prefix: the prefix of the Redis keys and channels.
        replay_buffer: about how many events each conversation's stream keeps.
        stream_ttl: seconds after its last event that a conversation's stream
            is deleted from Redis (None: never).

    Attributes:
        incarnation: this run of the node: a fresh random id per process.

    Raises:
        TypeError: an argument of the wrong type (named in the message).
        ValueError: an argument out of range (named in the message).
    """

    __slots__ = (
        "inbox_table",
        "incarnation",
        "lease_table",
        "lease_ttl",
        "node_id",
        "prefix",
        "redis_url",
        "renew_every",
        "replay_buffer",
        "stream_ttl",
    )

    def __init__(
        self,
        redis_url: str,
        *,
        node_id: str | None = None,
        lease_ttl: float = 10.0,
        renew_every: float | None = None,
        lease_table: str = "sessionvisor_leases",
        inbox_table: str = "sessionvisor_inbox",
        prefix: str = "sessionvisor",
        replay_buffer: int = 1000,
        stream_ttl: float | None = 86400.0,
    ) -> None:
        if not isinstance(redis_url, str):
            raise TypeError(f"Cluster redis_url must be a str, got {type(redis_url).__name__}")
        if not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"Cluster redis_url must be a redis://, rediss:// or unix:// URL, got {redis_url!r}"
            )
        if node_id is None:
            node_id = default_node_id()
        elif not isinstance(node_id, str):
            raise TypeError(f"Cluster node_id must be a str, got {type(node_id).__name__}")
        elif not node_id or len(node_id) > 128:
            raise ValueError(f"Cluster node_id must be 1 to 128 characters, got {len(node_id)}")
        elif any(unicodedata.category(c) in ("Cc", "Zs") for c in node_id):
            raise ValueError(
                f"Cluster node_id must hold no spaces or control characters, got {node_id!r}"
            )
        ttl = _seconds("lease_ttl", lease_ttl)
        every = ttl / 4 if renew_every is None else _seconds("renew_every", renew_every)
        if every * 3 > ttl:
            raise ValueError(
                f"Cluster renew_every must be at most lease_ttl / 3 ({ttl / 3:g} s) so a lease "
                f"is renewed at least three times per TTL, got {every:g}"
            )
        check_table_name("Cluster lease_table", lease_table)
        check_table_name("Cluster inbox_table", inbox_table)
        if lease_table == inbox_table:
            raise ValueError(f"Cluster lease_table and inbox_table are both {lease_table!r}")
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{}\n\r "):
            raise ValueError(
                f"Cluster prefix must be a non-empty key prefix without braces or spaces, "
                f"got {prefix!r}"
            )
        self.redis_url = redis_url
        self.node_id = node_id
        self.incarnation = _process_incarnation()
        self.lease_ttl = ttl
        self.renew_every = every
        self.lease_table = lease_table
        self.inbox_table = inbox_table
        self.prefix = prefix
        self.replay_buffer = _count("replay_buffer", replay_buffer)
        self.stream_ttl = None if stream_ttl is None else _seconds("stream_ttl", stream_ttl)

    def __repr__(self) -> str:
        # The URL may carry a password: show its host part only.
        host = self.redis_url.split("@")[-1]
        return (
            f"Cluster(redis=...{host!r}, node_id={self.node_id!r}, "
            f"lease_ttl={self.lease_ttl:g}, renew_every={self.renew_every:g})"
        )

    def build_runtime(self, *, store: StateStore, stats: RuntimeStats) -> ClusterNode:
        """This node's runtime (``SessionSupervisor(cluster=self)`` calls it once).

        Raises:
            TypeError: ``store`` cannot fence stale writers (a cluster needs a
                ``FencingStore`` shared by the nodes: ``PostgresStore``).
        """
        from ..state import FencingStore

        dsn = getattr(store, "dsn", None)
        if not isinstance(store, FencingStore) or not isinstance(dsn, str):
            raise TypeError(
                "SessionSupervisor(cluster=...) needs a store shared by the nodes that fences "
                f"stale writers: store=PostgresStore(dsn); got {type(store).__name__}"
            )
        from ._node import ClusterNode  # the node needs psycopg and redis; asyncio only

        table = getattr(store, "table", "sessionvisor_conversations")
        return ClusterNode(self, store, dsn=dsn, store_table=table, stats=stats)

    def lease_table_for(
        self, dsn: str, *, store_table: str = "sessionvisor_conversations", **kwargs: Any
    ) -> LeaseTable:
        """A ``LeaseTable`` for this node over ``dsn``, whose sweeper claims look
        at ``store_table`` and at this cluster's inbox."""
        return LeaseTable(
            dsn,
            node_id=self.node_id,
            incarnation=self.incarnation,
            ttl=self.lease_ttl,
            table=self.lease_table,
            store_table=store_table,
            inbox_table=self.inbox_table,
            **kwargs,
        )

    def inbox_for(self, dsn: str, **kwargs: Any) -> Inbox:
        """An ``Inbox`` over ``dsn``."""
        return Inbox(dsn, table=self.inbox_table, **kwargs)

    def event_streams(self) -> EventStreams:
        """The ``EventStreams`` on this cluster's Redis."""
        return EventStreams(
            self.redis_url, prefix=self.prefix, maxlen=self.replay_buffer, ttl=self.stream_ttl
        )

    def wakeups(self) -> Wakeups:
        """The ``Wakeups`` on this cluster's Redis."""
        return Wakeups(self.redis_url, prefix=self.prefix)
