"""The seams of the runtime: the mode (``Runtime``) and the three parts it
provides, the registry, the mailbox and the event bus.

The supervisor talks to these Protocols only. The mode is one object, chosen
once when the supervisor is built: ``_runtime.LocalRuntime`` for one process,
or whatever the object given as ``SessionSupervisor(cluster=...)`` builds
through ``RuntimeProvider.build_runtime`` (``sessionvisor.cluster.Cluster``
builds a cluster node). Nothing else in ``sessions`` knows which mode runs.
An alternative runtime builds its parts from the local ones through the
provider module ``sessions.spi``. The docstrings say what any implementation
must guarantee.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    import anyio.abc

    from ..state import State, StateStore
    from ._actor import Actor
    from ._bus import Subscription, Topic
    from ._events import Status
    from ._handle import Delivery
    from ._mailbox import LocalMailbox
    from ._stats import ClusterMetrics, RuntimeStats

__all__: list[str] = [
    "Bus",
    "Mailbox",
    "Reached",
    "Registry",
    "RunningElsewhere",
    "Runtime",
    "RuntimeProvider",
    "Session",
]


class RunningElsewhere(Exception):
    """The conversation's session runs on another node of the cluster.

    Raised by a cluster mailbox's ``ensure`` (after the scope's access was
    checked); the supervisor's ``start`` answers with a ``SessionInfo`` without
    a handle. Commands never raise it: they are posted to the owner.
    """

    def __init__(self, conversation_id: str, node_id: str | None) -> None:
        super().__init__(f"conversation {conversation_id!r} runs on node {node_id!r}")
        self.conversation_id = conversation_id
        self.node_id = node_id


class Session(Protocol):
    """One live session, as a mailbox (local or not) drives it."""

    @property
    def conversation_id(self) -> str: ...

    @property
    def owner(self) -> str | None:
        """The owner key the conversation belongs to (None: nobody's)."""
        ...

    @property
    def closed(self) -> bool:
        """True once it stopped or is stopping: commands go to the next session."""
        ...

    @property
    def status(self) -> Status: ...

    @property
    def state(self) -> State:
        """The live State (read it, never change it)."""
        ...

    async def send(self, content: Any, scope: Any, *, message_id: str | None = None) -> object:
        """Queue a user message, stored before this returns."""
        ...

    async def resume(
        self, answer: Any, scope: Any, *, interrupt_id: str | None = None
    ) -> Status: ...

    async def dismiss(self, scope: Any) -> Status: ...

    async def cancel(self, *, keep_partial: bool = False) -> Status: ...

    async def rewrite(
        self,
        message_id: str | None,
        content: Any,
        scope: Any,
        *,
        edit: bool,
        asked_id: str | None = None,
        wait: bool = False,
    ) -> str:
        """Regenerate (``edit`` False) or edit a user message; the id of the message
        asked again (``asked_id`` when given; with ``wait``, after the running turn)."""
        ...

    async def stop(self) -> None: ...


@attrs.frozen
class Reached:
    """What ``Mailbox.ensure`` found: the conversation's live actor, and whether
    this call started it."""

    actor: Actor
    started: bool


class Registry(Protocol):
    """Who holds each conversation, and how to reach its live session.

    Guarantees:
        - Single owner: at most one live actor per conversation at any time.
        - Single flight: concurrent ``ensure`` calls for one conversation run
          ``start`` once; every caller gets that one actor (or its error), and a
          failed start leaves nothing registered.
        - A conversation whose actor is stopping is not started again until the
          old actor's final save has landed.
    """

    def live(self, conversation_id: str) -> Actor | None:
        """The serving actor of the conversation, or None."""
        ...

    def entry(self, conversation_id: str) -> Actor | None:
        """The registered actor, serving or stopping, or None."""
        ...

    def holds(self, conversation_id: str) -> bool:
        """True while an actor, serving or stopping, is registered for the conversation."""
        ...

    def in_use(self, conversation_id: str) -> bool:
        """True while an actor is registered for the conversation or starting."""
        ...

    def actors(self) -> list[Actor]:
        """Every registered actor."""
        ...

    async def ensure(self, conversation_id: str, start: Callable[[], Awaitable[Actor]]) -> Reached:
        """Return the live actor, running ``start`` (once) when there is none
        (``started`` is True for the call that ran it)."""
        ...

    def forget(self, actor: Actor) -> None:
        """Drop an actor that ended (only if it still is the registered one)."""
        ...

    async def wait_starts(self) -> None:
        """Wait until no start is in flight (used by the drain)."""
        ...

    def add_viewer(self, conversation_id: str) -> None: ...

    def remove_viewer(self, conversation_id: str) -> int:
        """Remove one viewer; return how many remain."""
        ...

    def viewer_count(self, conversation_id: str) -> int: ...


class Mailbox(Protocol):
    """How a command reaches the session that owns the conversation.

    Guarantees:
        - Accepted means stored: ``send`` returns only once the message is
          persisted (queued or as the start of a turn).
        - Per-conversation order: commands accepted one after another are
          applied in that order.
        - Once: a send carrying a client message id the conversation already
          holds is acknowledged again and not applied twice.
        - Bounded: a conversation holds at most ``max_queued`` waiting messages;
          one more is refused with ``QueueFull``, never buffered.
    """

    async def ensure(
        self,
        conversation_id: str,
        *,
        scope: Any,
        request_opts: dict[str, Any] | None = None,
        reroute: bool = False,
        pending_resume: Any = ...,
        trusted: bool = False,
    ) -> Reached:
        """Reach the conversation's session, waking it when nothing holds it.

        ``trusted`` skips the ownership check (the runtime's own wake, for
        recovery).

        Raises:
            RunningElsewhere: another node serves it (after the access check).
            InvalidStatus: a ``pending_resume`` met a stored state with no
                interrupt (the session started all the same).
        """
        ...

    async def send(
        self,
        conversation_id: str,
        content: Any,
        *,
        scope: Any,
        request_opts: dict[str, Any],
        reroute: bool,
        message_id: str | None,
    ) -> Delivery: ...

    async def resume(
        self,
        conversation_id: str,
        answer: Any,
        *,
        scope: Any,
        request_opts: dict[str, Any],
        interrupt_id: str | None = None,
    ) -> Status:
        """Answer the pending interrupt (only the one named ``interrupt_id``, if given)."""
        ...

    async def dismiss(
        self, conversation_id: str, *, scope: Any, request_opts: dict[str, Any]
    ) -> Status: ...

    async def cancel(
        self, conversation_id: str, *, scope: Any, keep_partial: bool = False
    ) -> Status: ...

    async def rewrite(
        self,
        conversation_id: str,
        *,
        message_id: str | None,
        content: Any,
        edit: bool,
        scope: Any,
    ) -> str:
        """Regenerate (``edit`` False) or edit a user message; the id of the message
        asked again (see ``SessionSupervisor.regenerate`` and ``edit``)."""
        ...

    async def stop(self, conversation_id: str, *, scope: Any) -> str: ...


class Bus(Protocol):
    """How events reach subscribers.

    Guarantees:
        - Seq continuity: a conversation's events are numbered 1, 2, 3, ... with
          no gap and no repeat, across restarts, idle stops and wakes (a topic
          starts from the ``last_seq`` the store kept).
        - Order: every subscriber sees a conversation's events in seq order.
        - Bounded buffers: each subscriber buffers at most its ``capacity``
          events and is cut off (``SubscriberOverflow``) past that, never
          slowing the actor or the other subscribers; the replay buffer keeps
          at most ``replay`` events, and a subscriber asking for older ones gets
          a snapshot marked ``gap=True``.
        - A subscription belongs to the conversation, not to one actor: it
          outlives restarts, idle stops and wakes.
    """

    def topic(self, conversation_id: str, agent_id: str, last_seq: int, replay: int) -> Topic:
        """The conversation's topic, made when missing."""
        ...

    def existing(self, conversation_id: str) -> Topic | None: ...

    def subscriber_count(self, conversation_id: str) -> int:
        """How many subscriptions of this process follow the conversation."""
        ...

    async def status_elsewhere(self, conversation_id: str) -> tuple[Status, Any] | None:
        """The status (and pending interrupt) of the conversation's session on
        another node, when known (None in one process, or when no other node
        serves it)."""
        ...

    def subscribe(
        self,
        topic: Topic,
        *,
        owner: str | None,
        capacity: int,
        after: int | None,
        status: Status,
        interrupt: Any,
    ) -> Subscription: ...

    def unsubscribe(self, sub: Subscription) -> None: ...

    def release(self, conversation_id: str, still_live: Callable[[str], bool]) -> None:
        """Forget a topic that neither a subscriber nor a live actor holds."""
        ...

    def close_all(self) -> None:
        """End every subscription (the supervisor drained)."""
        ...


class Runtime(Protocol):
    """The mode the supervisor runs in: one object that provides the parts and
    the life of the runtime (``LocalRuntime`` in one process; a cluster node).

    Guarantees, beyond those of its parts:
        - Every save of ``store`` is refused once this runtime no longer owns
          the conversation (a cluster fences stale owners).
        - ``open`` starts whatever recovers unanswered work (``recover`` is
          None when the supervisor was built with ``recover=False``).
        - ``close`` runs after the drain saved every session, and hands the
          conversations over (a cluster gives up its leases).
    """

    @property
    def store(self) -> StateStore:
        """The store every save and load of the sessions goes through."""
        ...

    @property
    def registry(self) -> Registry: ...

    @property
    def bus(self) -> Bus: ...

    def mailbox(self, local: LocalMailbox) -> Mailbox:
        """The mailbox commands go through, built around the local one."""
        ...

    async def open(
        self,
        tasks: anyio.abc.TaskGroup,
        *,
        recover: Callable[[str], Awaitable[bool]] | None,
    ) -> None: ...

    def begin_drain(self) -> None:
        """The supervisor is leaving: take on no new conversation."""
        ...

    async def close(self) -> None: ...

    def metrics(self) -> ClusterMetrics | None:
        """The mode's own figures (``Metrics.cluster``), or None."""
        ...


class RuntimeProvider(Protocol):
    """What ``SessionSupervisor(cluster=...)`` accepts: an object that builds the
    runtime (``sessionvisor.cluster.Cluster`` is one)."""

    def build_runtime(self, *, store: StateStore, stats: RuntimeStats) -> Runtime: ...
