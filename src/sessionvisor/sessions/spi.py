"""What an alternative runtime may use: the provider module of ``sessions``.

A runtime (``sessionvisor.cluster`` is one) plugs into ``SessionSupervisor`` as
one object implementing ``Runtime``, built by the object passed as
``SessionSupervisor(cluster=...)`` (a ``RuntimeProvider``). It builds its parts
from the local ones through the extension points they document (the
registry's ``claim``/``release`` hooks, the bus's ``on_publish`` hook and the
``Topic`` feeding methods, the mailbox's ``deliver(first=...)``) and never
subclasses them or touches their private members. Everything else in the
private modules of ``sessions`` may change without notice; this module's
names are the contract between ``sessions`` and a runtime.
"""

from ._boot import NO_RESUME, Creation, Starter, check_owner
from ._bus import LocalBus, Subscription, Topic
from ._mailbox import LocalMailbox, stored_interrupt
from ._quotas import Quotas, TokenBuckets, install_quotas, rate_limited
from ._recovery import has_unanswered_work
from ._registry import LocalRegistry
from ._rewrites import check_stored_rewrite
from ._seams import (
    Bus,
    Mailbox,
    Reached,
    Registry,
    RunningElsewhere,
    Runtime,
    RuntimeProvider,
    Session,
)
from ._stats import ClusterMetrics, RuntimeStats
from ._validation import require_interrupt, require_notice

__all__ = [
    "NO_RESUME",
    "Bus",
    "ClusterMetrics",
    "Creation",
    "LocalBus",
    "LocalMailbox",
    "LocalRegistry",
    "Mailbox",
    "Quotas",
    "Reached",
    "Registry",
    "RunningElsewhere",
    "Runtime",
    "RuntimeProvider",
    "RuntimeStats",
    "Session",
    "Starter",
    "Subscription",
    "TokenBuckets",
    "Topic",
    "check_owner",
    "check_stored_rewrite",
    "has_unanswered_work",
    "install_quotas",
    "rate_limited",
    "require_interrupt",
    "require_notice",
    "stored_interrupt",
]
