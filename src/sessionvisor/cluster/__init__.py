"""The cluster mode (extra ``cluster``): several processes, sharing one
PostgreSQL database and one Redis, behave as one supervisor.

Turn it on by giving each process's supervisor a ``Cluster`` and the store
the nodes share::

    SessionSupervisor(router, store=PostgresStore(dsn), cluster=Cluster(redis_url))

(or ``python -m sessionvisor serve ... --store postgresql://... --cluster
redis://...``); see ``docs/cluster.md``. The supervisor calls
``Cluster.build_runtime`` once and runs on the node it builds instead of the
one-process runtime. A store that cannot fence stale writers (not a
``FencingStore`` such as ``PostgresStore``) is a ``TypeError`` there, when the
supervisor is constructed.

PostgreSQL is the authority: ``LeaseTable`` (who owns each conversation: a
lease with an epoch, the fencing token the store checks) and ``Inbox``
(commands for a conversation owned by another node). Redis is the
accelerator: ``EventStreams`` (a capped event stream per conversation) and
``Wakeups`` (per-node pub/sub). The node built from them composes the local
registry, mailbox and bus of ``sessionvisor.sessions`` through the provider
module ``sessionvisor.sessions.spi``, the only part of ``sessions`` it
imports besides the public package; ``sessions`` never imports this package.

Everything here runs on asyncio only (psycopg's async API, ``redis.asyncio``).
psycopg and redis are imported when first used, so importing this package
needs neither.
"""

from ._config import Cluster
from ._events import EventStreams, ReadResult, StreamEvent, StreamReader
from ._inbox import COMMAND_KINDS, Command, CommandKind, Inbox, InboxListener, Posted
from ._leases import Fencing, Lease, LeaseTable, Owner, Renewal
from ._wakeups import WakeupListener, Wakeups

__all__ = [
    "COMMAND_KINDS",
    "Cluster",
    "Command",
    "CommandKind",
    "EventStreams",
    "Fencing",
    "Inbox",
    "InboxListener",
    "Lease",
    "LeaseTable",
    "Owner",
    "Posted",
    "ReadResult",
    "Renewal",
    "StreamEvent",
    "StreamReader",
    "WakeupListener",
    "Wakeups",
]
