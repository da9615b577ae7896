"""``SessionSupervisor``: the public calls.

The supervisor checks arguments and ownership, then hands each call to the
parts of its runtime (``_seams.Runtime``, chosen once in ``__init__``): the
registry, the mailbox and the bus. Its life (enter, drain) is ``_lifetime``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs

from .._clock import Clock, SystemClock
from .._json import check_json
from .._options import SupervisorOpts
from ..routers import FactoryRouter, check_request_opts
from ..state import MemoryStore, State, StateStore, load_state
from ._actor import Actor
from ._boot import NO_RESUME, Starter, check_owner
from ._bus import Subscription
from ._construction import check_constructor_args, default_agent_id, default_owner_of
from ._events import Status
from ._handle import Delivery, SessionHandle, SessionInfo, SessionSummary
from ._lifetime import Lifetime, Phase
from ._mailbox import LocalMailbox
from ._records import Records
from ._recovery import wake_for_recovery
from ._rewrites import Rewrites
from ._runtime import LOCAL
from ._seams import Mailbox, RunningElsewhere, Runtime, RuntimeProvider
from ._stats import Metrics, RuntimeStats, collect_metrics
from ._superseding import visible
from ._timer_calls import TimerCalls
from ._validation import check_content, check_conversation_id, check_message_id
from ._watching import open_subscription, viewer_of

__all__ = ["SessionSupervisor", "default_owner_of"]
_ANY: Any = object()


class SessionSupervisor(Records, Rewrites, TimerCalls):
    """Keeps one supervised actor per conversation.

    Use it as an async context manager: it owns the task group every session runs
    in, and leaving it drains (running turns get ``shutdown_timeout``, every live
    session persists, then all stop). On entering it wakes the conversations a
    crashed process left with unanswered work (``recover``).

    Args:
        router: picks the factory and config of each conversation.
        store: where conversations persist (default: a new ``MemoryStore``).
        agent_id: maps a conversation id to its agent id.
        supervisor_opts: defaults for every session (a mapping or ``SupervisorOpts``).
        owner_of: maps a trusted scope to its owner key.
        clock: time source (``sessionvisor.testing.ManualClock`` in tests).
        on_corrupt: ``"fail"`` (default) or ``"quarantine"`` an unreadable snapshot.
        recover: wake conversations with unanswered work when entered (default True).
        cluster: a ``sessionvisor.cluster.Cluster``: this supervisor is one node of
            several sharing ``store`` (a ``PostgresStore``) and one Redis; asyncio
            only. See ``docs/cluster.md``.

    Raises:
        TypeError: an argument has the wrong type (the message names it).
        ValueError: ``on_corrupt`` or a supervisor option is not valid.
    """

    def __init__(
        self,
        router: FactoryRouter | Callable[..., Any],
        *,
        store: StateStore | None = None,
        agent_id: Callable[[str], str] | None = None,
        supervisor_opts: SupervisorOpts | Mapping[str, Any] | None = None,
        owner_of: Callable[[Any], str | None] | None = None,
        clock: Clock | None = None,
        on_corrupt: Literal["fail", "quarantine"] = "fail",
        recover: bool = True,
        cluster: RuntimeProvider | None = None,
    ) -> None:
        check_constructor_args(
            router=router,
            store=store,
            agent_id=agent_id,
            owner_of=owner_of,
            clock=clock,
            on_corrupt=on_corrupt,
            recover=recover,
            cluster=cluster,
        )
        self._router = router
        self._agent_id = agent_id or default_agent_id
        self._defaults = SupervisorOpts().merged(supervisor_opts)
        self._owner_of = owner_of or default_owner_of
        self._clock: Clock = clock or SystemClock()
        self._stats = RuntimeStats()
        # The mode: one object, chosen here and nowhere else.
        provider: RuntimeProvider = cluster if cluster is not None else LOCAL
        self._runtime: Runtime = provider.build_runtime(
            store=store if store is not None else MemoryStore(), stats=self._stats
        )
        self._store = self._runtime.store
        self._registry = self._runtime.registry
        self._bus = self._runtime.bus
        self._life = Lifetime(
            runtime=self._runtime,
            clock=self._clock,
            stats=self._stats,
            recover=self._wake_for_recovery if recover else None,
        )
        self._host = self._life.host
        self._check_open = self._life.check_open
        self._starter = Starter(
            router=router,
            store=self._store,
            agent_id=self._agent_id,
            owner_of=self._owner_of,
            defaults=self._defaults,
            on_corrupt=on_corrupt,
            bus=self._bus,
            host=self._host,
            is_open=self._life.is_open,
        )
        local = LocalMailbox(
            registry=self._registry,
            starter=self._starter,
            owner_of=self._owner_of,
            check_open=self._check_open,
        )
        self._mailbox: Mailbox = self._runtime.mailbox(local)
        self._host.rebuild_with = self._starter.rebuild

    @property
    def store(self) -> StateStore:
        """The store conversations persist in."""
        return self._store

    @property
    def defaults(self) -> SupervisorOpts:
        """The supervisor-wide session options."""
        return self._defaults

    @property
    def phase(self) -> Phase:
        """Where the supervisor is in its life: not entered yet, open, draining, closed."""
        return self._life.phase

    @property
    def draining(self) -> bool:
        """True while leaving the ``async with`` block."""
        return self._life.phase == "draining"

    async def __aenter__(self) -> SessionSupervisor:
        await self._life.enter(self._fire_timer)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        await self._life.leave(exc_type)
        return None

    def _check_owner(self, owner: str | None, scope: Any, conversation_id: str) -> None:
        check_owner(self._owner_of, owner, scope=scope, conversation_id=conversation_id)

    async def _wake_for_recovery(self, conversation_id: str) -> bool:
        return await wake_for_recovery(
            conversation_id,
            is_open=self._life.is_open,
            registry=self._registry,
            load=self._starter.load,
            mailbox=self._mailbox,
            agent_id=self._agent_id(conversation_id),
        )

    # -- public calls ----------------------------------------------------------------

    async def start(
        self,
        conversation_id: str,
        *,
        scope: Any = None,
        request_opts: Mapping[str, Any] | None = None,
        pending_resume: Any = None,
        reroute: bool = False,
    ) -> SessionInfo:
        """Start the conversation's session, or find the live one.

        Concurrent starts of one conversation make one router call, one factory
        call and one actor, and all get the same handle.

        Returns:
            ``SessionInfo``; ``started`` is False when it was already live (the
            start-time options were then not applied).

        Raises:
            RegistryUnavailable, AccessDenied, RouteValidationError, NoRouteError,
            RouteChangedError, FactoryValidationError, FactoryPermissionError,
            FactoryContractError, CorruptStateError, SessionFailedError,
            InvalidStatus (a ``pending_resume`` for a state with no interrupt),
            TypeError/ValueError for bad arguments.
        """
        cid = check_conversation_id(conversation_id)
        if pending_resume is not None:
            check_json(pending_resume, "pending_resume", conversation_id=cid)
        opts = check_request_opts(request_opts, conversation_id=cid)
        try:
            reached = await self._mailbox.ensure(
                cid,
                scope=scope,
                request_opts=opts,
                reroute=reroute,
                pending_resume=NO_RESUME if pending_resume is None else pending_resume,
            )
        except RunningElsewhere:
            if pending_resume is not None:
                await self._mailbox.resume(cid, pending_resume, scope=scope, request_opts=opts)
            return SessionInfo(self._agent_id(cid), cid, False, None)
        actor = reached.actor
        return SessionInfo(actor.agent_id, cid, reached.started, actor.handle)

    async def send(
        self,
        conversation_id: str,
        content: Any,
        *,
        scope: Any = None,
        request_opts: Mapping[str, Any] | None = None,
        reroute: bool = False,
        message_id: str | None = None,
    ) -> Delivery:
        """Persist a user message and run (or queue) a turn; wakes the session if needed.

        Returns as soon as the message is accepted and saved, not when the reply is
        done. With ``message_id`` (a client's id for the message) a retried send
        is acknowledged again (``duplicate=True``) and not applied twice.

        Raises:
            QueueFull, MessageRejected, AccessDenied, RegistryUnavailable, the
            errors of ``start``, and TypeError/ValueError for a bad id or content.
        """
        cid = check_conversation_id(conversation_id)
        mid = check_message_id(message_id, cid)
        live = self._registry.live(cid)
        # A live session's own limit applies (its factory may have raised it); before a wake
        # the default is checked, so nothing wakes for a refused message.
        limit = (live.opts if live else self._defaults).max_message_bytes
        check_content(content, max_bytes=limit, conversation_id=cid)
        opts = check_request_opts(request_opts, conversation_id=cid)
        return await self._mailbox.send(
            cid, content, scope=scope, request_opts=opts, reroute=reroute, message_id=mid
        )

    async def resume(
        self,
        conversation_id: str,
        answer: Any,
        *,
        scope: Any = None,
        request_opts: Mapping[str, Any] | None = None,
        interrupt_id: str | None = None,
    ) -> Status:
        """Answer the pending interrupt (with ``interrupt_id``: that one only), waking the
        session if needed; return ``running`` once the store holds the answer.

        Raises:
            InvalidStatus: no interrupt is pending, or not the one named
                (``not_running`` when nothing is live or stored; nothing is created).
            StoreUnavailable, AccessDenied, RegistryUnavailable, the errors of ``start``.
        """
        cid = check_conversation_id(conversation_id)
        check_json(answer, "answer", conversation_id=cid)
        opts = check_request_opts(request_opts, conversation_id=cid)
        return await self._mailbox.resume(
            cid, answer, scope=scope, request_opts=opts, interrupt_id=interrupt_id
        )

    async def dismiss(
        self,
        conversation_id: str,
        *,
        scope: Any = None,
        request_opts: Mapping[str, Any] | None = None,
    ) -> Status:
        """Clear a ``notice`` interrupt, waking the session if needed.

        Raises:
            InvalidStatus: no ``notice`` interrupt pending (nothing is created).
            AccessDenied, RegistryUnavailable, the errors of ``start``.
        """
        cid = check_conversation_id(conversation_id)
        opts = check_request_opts(request_opts, conversation_id=cid)
        return await self._mailbox.dismiss(cid, scope=scope, request_opts=opts)

    async def stop(self, conversation_id: str, *, scope: Any = None) -> str:
        """Persist and stop the session.

        Returns:
            ``"stopped"``, or ``"not_running"`` when there was no live session.
        """
        cid = check_conversation_id(conversation_id)
        return await self._mailbox.stop(cid, scope=scope)

    async def running(self, conversation_id: str, *, scope: Any = None) -> bool:
        """True when a live session exists (RegistryUnavailable when it cannot be known)."""
        return self._local(conversation_id, scope) is not None

    async def status(self, conversation_id: str, *, scope: Any = None) -> Status:
        """Return the live status, or ``not_running``."""
        actor = self._local(conversation_id, scope)
        return Status.NOT_RUNNING if actor is None else actor.status

    def get(self, conversation_id: str, *, scope: Any = None) -> SessionHandle | None:
        """Return the live session's handle, or None (local sessions only)."""
        actor = self._local(conversation_id, scope)
        return None if actor is None else actor.handle

    def _local(self, conversation_id: str, scope: Any) -> Actor | None:
        cid = check_conversation_id(conversation_id)
        self._check_open(cid)
        actor = self._registry.live(cid)
        if actor is not None:
            self._check_owner(actor.owner, scope, cid)
        return actor

    async def list_running(self, *, scope: Any = _ANY) -> list[SessionSummary]:
        """Summaries of the live sessions; with ``scope``, only those that scope owns."""
        self._check_open()
        owner = _ANY if scope is _ANY else self._owner_of(scope)
        return [
            actor.handle.info()
            for actor in self._registry.actors()
            if not actor.closed and (owner is _ANY or actor.owner == owner)
        ]

    async def load(self, conversation_id: str, *, scope: Any = None) -> State | None:
        """Return the conversation's State (a copy of the live one, else the stored one),
        as people see it: without the messages a regenerate or an edit superseded.

        Raises:
            AccessDenied, CorruptStateError, RegistryUnavailable.
        """
        actor = self._local(conversation_id, scope)
        if actor is not None:
            return visible(actor.handle.snapshot())
        stored = await self._store.load(conversation_id)
        if stored is None:
            return None
        self._check_owner(stored.owner, scope, conversation_id)
        return visible(load_state(stored.state, conversation_id))

    async def delete(self, conversation_id: str, *, scope: Any = None) -> str:
        """Stop the session and delete the stored conversation.

        Returns:
            What ``stop`` returned.
        """
        cid = check_conversation_id(conversation_id)
        await self.check_access(cid, scope=scope)
        result = await self.stop(cid, scope=scope)
        await self._store.delete(cid)
        return result

    async def check_access(self, conversation_id: str, *, scope: Any = None) -> bool:
        """Return whether the conversation exists (live or stored) for this scope.

        Raises:
            AccessDenied: it exists and belongs to another owner.
        """
        if self._local(conversation_id, scope) is not None:
            return True
        stored = await self._store.load(conversation_id)
        if stored is None:
            return False
        self._check_owner(stored.owner, scope, conversation_id)
        return True

    def metrics(self) -> Metrics:
        """A snapshot of this supervisor's figures: sessions, turns, restarts, events, saves.

        Gauges (live, parked, running sessions, queued messages) are counted now;
        the rest accumulate from the moment the supervisor was built. Parked
        sessions' queues are not unfolded to be counted (they hold none that run).
        """
        metrics = collect_metrics(self._registry.actors(), self._stats)
        return attrs.evolve(metrics, cluster=self._runtime.metrics())

    def viewer_count(self, conversation_id: str) -> int:
        """How many ``viewing`` blocks are open for the conversation (this process)."""
        return self._registry.viewer_count(conversation_id)

    def subscriber_count(self, conversation_id: str) -> int:
        """How many subscriptions are open for the conversation (this process)."""
        return self._bus.subscriber_count(conversation_id)

    @asynccontextmanager
    async def subscribe(
        self, conversation_id: str, *, after: int | None = None, scope: Any = None
    ) -> AsyncIterator[Subscription]:
        """Subscribe to the conversation's events (it need not be running).

        Without ``after`` the first event is a ``StatusChanged`` snapshot carrying
        the last issued seq. With ``after=n`` the buffered events after ``n`` come
        first (or a snapshot marked ``gap=True`` when some are gone).

        Raises:
            AccessDenied, RegistryUnavailable, CorruptStateError; the iterator
            raises ``SubscriberOverflow`` when the subscriber falls too far behind.
        """
        cid = check_conversation_id(conversation_id)
        if after is not None and (not isinstance(after, int) or after < 0):
            raise ValueError(f"after must be a non-negative int or None, got {after!r}")
        async with open_subscription(
            cid,
            after=after,
            owner=self._owner_of(scope),
            live=lambda: self._local(cid, scope),
            check_stored=lambda owner: self._check_owner(owner, scope, cid),
            store=self._store,
            registry=self._registry,
            bus=self._bus,
            agent_id=self._agent_id(cid),
            defaults=self._defaults,
        ) as sub:
            yield sub

    @asynccontextmanager
    async def viewing(self, conversation_id: str, *, scope: Any = None) -> AsyncIterator[None]:
        """Mark one viewer of the conversation while the block runs.

        A viewed session does not stop for inactivity; when the last viewer leaves
        a session that is not running, it stops after ``viewer_grace``. Viewing
        does not wake a stopped session.
        """
        cid = check_conversation_id(conversation_id)
        self._check_open(cid)
        await self.check_access(cid, scope=scope)
        async with viewer_of(cid, self._registry):
            yield
