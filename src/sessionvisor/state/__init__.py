"""State and persistence: the data of a conversation and where it is kept.

``State``/``Message`` are pydantic models; ``StateStore`` is the async storage
protocol with ``MemoryStore`` and ``SQLiteStore`` in the core and
``PostgresStore`` (extra ``postgres``) in ``sessionvisor.state.postgres``.
``dump_state``/``load_state`` give the versioned JSON form, with migrations
registered by ``register_migration`` (or on a separate
``MigrationRegistry``). This package imports nothing else of
sessionvisor but the errors and the clock.
"""

from ._memory import MemoryStore
from ._models import (
    SCHEMA_VERSION,
    Content,
    Journal,
    Message,
    PendingInterrupt,
    State,
    StepRecord,
    Usage,
)
from ._serializer import MigrationRegistry, dump_state, load_state, register_migration
from ._sqlite import SQLiteStore
from ._store import (
    HOLDING_LIFECYCLES,
    LIFECYCLES,
    FencingStore,
    Lifecycle,
    StateStore,
    StoredConversation,
)
from ._timer_rows import StoredTimer, TimerInfo
from ._writes import is_unanswered

__all__ = [
    "HOLDING_LIFECYCLES",
    "LIFECYCLES",
    "SCHEMA_VERSION",
    "Content",
    "FencingStore",
    "Journal",
    "Lifecycle",
    "MemoryStore",
    "Message",
    "MigrationRegistry",
    "PendingInterrupt",
    "SQLiteStore",
    "State",
    "StateStore",
    "StepRecord",
    "StoredConversation",
    "StoredTimer",
    "TimerInfo",
    "Usage",
    "dump_state",
    "is_unanswered",
    "load_state",
    "register_migration",
]
