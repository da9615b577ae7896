"""Helpers for testing agents, routers and code built on sessionvisor.

``ManualClock`` moves time by hand; ``ScriptedAgent`` replies, interrupts,
crashes or stalls on cue; ``FlakyStore`` wraps a store to inject failures and
delays; ``wait_for_status``/``wait_for_event``/``collect_until`` wait for what
a user would see; ``record_events`` keeps every event of a conversation in an
``EventRecorder`` while a test runs; ``wait_until`` waits for any condition
(``wait_until_sync`` without an event loop) and ``wait_until_settled`` until a
conversation has nothing left to do (without a wall-clock sleep);
``subscriber_backlogs`` shows the events held for each subscriber of a
conversation; ``free_port`` finds a TCP port for a server a test starts.
For tests of the stores themselves: ``raw_record``/``raw_quarantined_record``
read a ``MemoryStore``'s bytes as held, ``overwrite_stored_state`` plants a
corrupt state, ``sqlite_synchronous`` reads a ``SQLiteStore``'s setting, and
``hold_commits``/``record_commit_batches`` hold and watch the SQL stores'
group commit.
Nothing in sessionvisor imports this package.
"""

from ._agent import ScriptedAgent
from ._clock import ManualClock
from ._events import EventRecorder, record_events
from ._net import free_port
from ._observe import subscriber_backlogs
from ._store import FlakyStore, StoreUnavailable
from ._stores import (
    hold_commits,
    overwrite_stored_state,
    raw_quarantined_record,
    raw_record,
    record_commit_batches,
    sqlite_synchronous,
)
from ._wait import (
    collect_until,
    wait_for_event,
    wait_for_status,
    wait_until,
    wait_until_settled,
    wait_until_sync,
)

__all__ = [
    "EventRecorder",
    "FlakyStore",
    "ManualClock",
    "ScriptedAgent",
    "StoreUnavailable",
    "collect_until",
    "free_port",
    "hold_commits",
    "overwrite_stored_state",
    "raw_quarantined_record",
    "raw_record",
    "record_commit_batches",
    "record_events",
    "sqlite_synchronous",
    "subscriber_backlogs",
    "wait_for_event",
    "wait_for_status",
    "wait_until",
    "wait_until_settled",
    "wait_until_sync",
]
