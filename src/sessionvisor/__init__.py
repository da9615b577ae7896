"""sessionvisor: one supervised, long-lived actor per conversation.

How the package is layered (each layer imports only those above it):

- ``_errors``, ``_options``, ``_clock``: errors, ``SupervisorOpts``, time.
- ``state``: ``State``/``Message``, the ``StateStore`` protocol and its stores.
- ``agents``: the ``Agent`` protocol, ``Turn`` and outcomes, ``FunctionAgent``.
- ``factories`` and ``routers``: which agent a conversation gets, and with what config.
- ``sessions``: the supervisor, the actors, the registry and the event bus.
- ``http`` (extra ``http``) and ``cluster`` sit on top; ``testing`` is for tests.

The names below are the public API; everything with a leading underscore is not.
"""

from ._clock import Clock, SystemClock
from ._errors import (
    AccessDenied,
    CorruptStateError,
    FactoryContractError,
    FactoryError,
    FactoryPermissionError,
    FactoryValidationError,
    InvalidAnswer,
    InvalidStatus,
    MessageRejected,
    MessageTooLarge,
    NoRouteError,
    NothingStored,
    NotRunning,
    QueueFull,
    RegistryUnavailable,
    RouteChangedError,
    RouteError,
    RouteValidationError,
    SessionFailedError,
    SessionvisorError,
    StaleWriteError,
    StoreClosed,
    StoreUnavailable,
    SubscriberOverflow,
)
from ._options import SupervisorOpts
from .agents import Agent, Done, FunctionAgent, Interrupt, Outcome, Pause, Turn
from .factories import Factory, SessionOpts, in_thread, invoke_factory
from .routers import FactoryRouter, KeyedRouter, Route, SingleRouter
from .sessions import (
    AgentEvent,
    Delivery,
    Delta,
    Event,
    MessageAppended,
    MessageQueued,
    Metrics,
    Restarted,
    SessionFailed,
    SessionHandle,
    SessionInfo,
    SessionSummary,
    SessionSupervisor,
    Shutdown,
    Status,
    StatusChanged,
    Subscription,
)
from .state import (
    MemoryStore,
    Message,
    PendingInterrupt,
    SQLiteStore,
    State,
    StateStore,
    StoredConversation,
)

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "Agent",
    "AgentEvent",
    "Clock",
    "CorruptStateError",
    "Delivery",
    "Delta",
    "Done",
    "Event",
    "Factory",
    "FactoryContractError",
    "FactoryError",
    "FactoryPermissionError",
    "FactoryRouter",
    "FactoryValidationError",
    "FunctionAgent",
    "Interrupt",
    "InvalidAnswer",
    "InvalidStatus",
    "KeyedRouter",
    "MemoryStore",
    "Message",
    "MessageAppended",
    "MessageQueued",
    "MessageRejected",
    "MessageTooLarge",
    "Metrics",
    "NoRouteError",
    "NotRunning",
    "NothingStored",
    "Outcome",
    "Pause",
    "PendingInterrupt",
    "QueueFull",
    "RegistryUnavailable",
    "Restarted",
    "Route",
    "RouteChangedError",
    "RouteError",
    "RouteValidationError",
    "SQLiteStore",
    "SessionFailed",
    "SessionFailedError",
    "SessionHandle",
    "SessionInfo",
    "SessionOpts",
    "SessionSummary",
    "SessionSupervisor",
    "SessionvisorError",
    "Shutdown",
    "SingleRouter",
    "StaleWriteError",
    "State",
    "StateStore",
    "Status",
    "StatusChanged",
    "StoreClosed",
    "StoreUnavailable",
    "StoredConversation",
    "SubscriberOverflow",
    "Subscription",
    "SupervisorOpts",
    "SystemClock",
    "Turn",
    "__version__",
    "in_thread",
    "invoke_factory",
]
