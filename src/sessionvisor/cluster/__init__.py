"""The data layer of the cluster mode (extra ``cluster``): several processes
sharing one PostgreSQL database and one Redis.

PostgreSQL is the authority: ``LeaseTable`` (who owns each conversation: a
lease with an epoch, the fencing token the store checks) and ``Inbox``
(commands for a conversation owned by another node). Redis is the
accelerator: ``EventStreams`` (a capped event stream per conversation) and
``Wakeups`` (per-node pub/sub). ``Cluster`` holds one node's settings and
makes them. See ``docs/cluster.md``.

Not wired into the supervisor yet: ``SessionSupervisor`` refuses a cluster.
Everything here runs on asyncio only (psycopg's async API, ``redis.asyncio``).
This package may import ``sessionvisor.state`` and the errors; nothing of
sessionvisor imports it. psycopg and redis are imported when first used, so
importing this package needs neither.
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
