"""Helpers for testing agents, routers and code built on sessionvisor.

``ManualClock`` moves time by hand; ``ScriptedAgent`` replies, interrupts,
crashes or stalls on cue; ``FlakyStore`` wraps a store to inject failures and
delays; ``wait_for_status``/``wait_for_event``/``collect_until`` wait for what
a user would see; ``record_events`` keeps every event of a conversation in an
``EventRecorder`` while a test runs; ``wait_until`` waits for any condition and
``wait_until_settled`` until a conversation has nothing left to do (without a
wall-clock sleep). Nothing in sessionvisor imports this package.
"""

from ._agent import ScriptedAgent
from ._clock import ManualClock
from ._events import EventRecorder, record_events
from ._store import FlakyStore, StoreUnavailable
from ._wait import (
    collect_until,
    wait_for_event,
    wait_for_status,
    wait_until,
    wait_until_settled,
)

__all__ = [
    "EventRecorder",
    "FlakyStore",
    "ManualClock",
    "ScriptedAgent",
    "StoreUnavailable",
    "collect_until",
    "record_events",
    "wait_for_event",
    "wait_for_status",
    "wait_until",
    "wait_until_settled",
]
