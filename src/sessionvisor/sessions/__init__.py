"""Sessions: one supervised actor per conversation.

``SessionSupervisor`` is the entry point; ``SessionHandle`` is one live session;
the events and ``Status`` are what subscribers see. The engine - the actor, the
registry, the event bus and the shared timer - lives in private modules. This
package uses ``routers``, ``factories``, ``state`` and ``agents``; none of them
imports it.
"""

from ._bus import Subscription
from ._construction import default_owner_of
from ._events import (
    AgentEvent,
    Delta,
    Event,
    MessageAppended,
    MessageQueued,
    Restarted,
    SessionFailed,
    Shutdown,
    Status,
    StatusChanged,
)
from ._handle import Delivery, SessionHandle, SessionInfo, SessionSummary
from ._intake import PreprocessContext
from ._stats import ClusterMetrics, HistogramSnapshot, Metrics
from ._supervisor import SessionSupervisor

__all__ = [
    "AgentEvent",
    "ClusterMetrics",
    "Delivery",
    "Delta",
    "Event",
    "HistogramSnapshot",
    "MessageAppended",
    "MessageQueued",
    "Metrics",
    "PreprocessContext",
    "Restarted",
    "SessionFailed",
    "SessionHandle",
    "SessionInfo",
    "SessionSummary",
    "SessionSupervisor",
    "Shutdown",
    "Status",
    "StatusChanged",
    "Subscription",
    "default_owner_of",
]
