"""Helpers for testing agents, routers and code built on sessionvisor.

``ManualClock`` moves time by hand; ``ScriptedAgent`` replies, interrupts,
crashes or stalls on cue; ``FlakyStore`` wraps a store to inject failures and
delays; ``wait_for_status``/``wait_for_event`` wait for what a user would see.
Nothing in sessionvisor imports this package.
"""

from ._agent import ScriptedAgent
from ._clock import ManualClock
from ._store import FlakyStore, StoreUnavailable
from ._wait import collect_until, wait_for_event, wait_for_status

__all__ = [
    "FlakyStore",
    "ManualClock",
    "ScriptedAgent",
    "StoreUnavailable",
    "collect_until",
    "wait_for_event",
    "wait_for_status",
]
