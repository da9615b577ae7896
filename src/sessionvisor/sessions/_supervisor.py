"""``SessionSupervisor``: the public calls, the drain, and the host of the actors.

The supervisor checks arguments and ownership, then hands each call to one of
the three seams (``_seams``): the registry (who holds a conversation), the
mailbox (how a command reaches it) and the bus (how events reach
subscribers). The start pipeline is ``_boot.Starter``; crash recovery at
start-up is ``_recovery``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import anyio.abc
import attrs
import structlog

from .._clock import Clock, SystemClock
from .._errors import RegistryUnavailable
from .._json import check_json
from .._options import SupervisorOpts
from ..routers import FactoryRouter, check_request_opts
from ..state import MemoryStore, State, StateStore, load_state
from ._actor import Actor
from ._boot import NO_RESUME, Starter, check_owner
from ._bus import LocalBus, Subscription, Topic
from ._construction import check_constructor_args
from ._events import Status
from ._handle import Delivery, SessionHandle, SessionInfo, SessionSummary
from ._host import LocalHost
from ._mailbox import LocalMailbox
from ._recovery import has_unanswered_work, recover_unanswered
from ._registry import LocalRegistry
from ._runners import Runners
from ._seams import Bus, Mailbox, Registry, RunningElsewhere
from ._stats import Metrics, RuntimeStats, collect_metrics
from ._stopping import drain
from ._timers import Deadlines
from ._validation import check_content, check_conversation_id, check_message_id

__all__ = ["SessionSupervisor", "default_owner_of"]

_log = structlog.get_logger("sessionvisor")
_ANY: Any = object()


def default_owner_of(scope: Any) -> str | None:
    """The owner key of a scope: ``scope["owner"]``, ``scope.owner``, a str itself, or None."""
    if scope is None:
        return None
    if isinstance(scope, str):
        return scope
    value = scope.get("owner") if isinstance(scope, Mapping) else getattr(scope, "owner", None)
    return None if value is None else str(value)


def _default_agent_id(conversation_id: str) -> str:
    return f"conversation-{conversation_id}"


class SessionSupervisor:
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
        cluster: Any = None,
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
        self._store: StateStore = store if store is not None else MemoryStore()
        self._agent_id = agent_id or _default_agent_id
        self._defaults = SupervisorOpts().merged(supervisor_opts)
        self._owner_of = owner_of or default_owner_of
        self._clock: Clock = clock or SystemClock()
        self._recover = recover
        # The three seams, chosen here and nowhere else.
        self._stats = RuntimeStats()
        self._node: Any = None
        if cluster is None:
            self._registry: Registry = LocalRegistry()
            self._bus: Bus = LocalBus(self._stats)
        else:
            from ..cluster._node import ClusterNode  # the extra "cluster"; asyncio only

            self._node = node = ClusterNode(cluster, self._store, self._stats)
            self._store = node.store  # every save carries this node's lease epoch
            self._registry = node.registry
            self._bus = node.bus
        self._deadlines = Deadlines(self._clock, self._stats)
        self._host = LocalHost(
            clock=self._clock,
            store=self._store,
            registry=self._registry,
            bus=self._bus,
            deadlines=self._deadlines,
            stats=self._stats,
        )
        self._starter = Starter(
            router=router,
            store=self._store,
            agent_id=self._agent_id,
            owner_of=self._owner_of,
            defaults=self._defaults,
            on_corrupt=on_corrupt,
            bus=self._bus,
            host=self._host,
            is_open=lambda: self._phase == "open",
        )
        local = LocalMailbox(
            registry=self._registry,
            starter=self._starter,
            owner_of=self._owner_of,
            check_open=self._check_open,
        )
        self._mailbox: Mailbox = (
            local
            if self._node is None
            else self._node.make_mailbox(
                local, starter=self._starter, owner_of=self._owner_of, check_open=self._check_open
            )
        )
        self._host.rebuild_with = self._starter.rebuild
        self._tg: anyio.abc.TaskGroup | None = None
        self._phase: Literal["new", "open", "draining", "closed"] = "new"

    @property
    def store(self) -> StateStore:
        """The store conversations persist in."""
        return self._store

    @property
    def defaults(self) -> SupervisorOpts:
        """The supervisor-wide session options."""
        return self._defaults

    @property
    def phase(self) -> Literal["new", "open", "draining", "closed"]:
        """Where the supervisor is in its life: not entered yet, open, draining, closed."""
        return self._phase

    @property
    def draining(self) -> bool:
        """True while leaving the ``async with`` block."""
        return self._phase == "draining"

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> SessionSupervisor:
        if self._phase != "new":
            raise RuntimeError("a SessionSupervisor can be entered only once")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._host.runners = Runners(self._tg)
        self._tg.start_soon(self._deadlines.run)
        if self._node is not None:
            try:
                await self._node.open(self._tg)
            except BaseException:
                self._tg.cancel_scope.cancel()
                await self._tg.__aexit__(None, None, None)
                self._phase = "closed"
                raise
        self._phase = "open"
        if self._recover and self._node is None:
            # In a cluster the sweepers of all nodes do this, under leases.
            self._tg.start_soon(recover_unanswered, self._store, self._wake_for_recovery)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        assert self._tg is not None
        # Left because the enclosing scope was cancelled (a deadline, a test's timeout):
        # whoever cancelled wants out now, so running turns get no shutdown_timeout
        # (with a hand-driven clock they would wait forever). They still hand their
        # messages back and every session persists.
        grace = not (
            isinstance(exc_type, type) and issubclass(exc_type, anyio.get_cancelled_exc_class())
        )
        self._phase = "draining"
        if self._node is not None:
            self._node.begin_drain()
        log = _log.bind(sessions=len(self._registry.actors()))
        log.info("supervisor_draining")
        runners = self._host.runners
        try:
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as drain_tg:
                    if not grace:
                        # The supervisor's own task group sits inside the cancelled scope:
                        # a task started there now (a stop's worker), or an idle runner
                        # handed work, is cancelled before it can run, and the drain
                        # would wait for it for ever. The drain's work runs here instead.
                        self._host.runners = Runners(drain_tg)
                    await self._registry.wait_starts()
                    await drain(self._registry.actors(), grace=grace)
                    self._bus.close_all()
                    if self._node is not None:
                        await self._node.close()  # gives up the leases: others take over
                    drain_tg.cancel_scope.cancel()  # the drain's idle runners
        finally:
            for pool in {runners, self._host.runners}:
                if pool is not None:
                    pool.cancel_all()  # a save retry waiting on a dead store
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._phase = "closed"
            log.info("supervisor_drained")
        return None

    def _check_open(self, conversation_id: str | None = None) -> None:
        if self._phase != "open":
            reason = {
                "new": "has not been entered (use `async with`)",
                "draining": "is draining",
                "closed": "is closed",
            }[self._phase]
            subject = "" if conversation_id is None else f"conversation {conversation_id!r}: "
            raise RegistryUnavailable(f"{subject}the session supervisor {reason}")

    def _check_owner(self, owner: str | None, scope: Any, conversation_id: str) -> None:
        check_owner(self._owner_of, owner, scope, conversation_id)

    async def _wake_for_recovery(self, conversation_id: str) -> bool:
        """Wake one conversation found with unanswered work; False when it was already live."""
        cid = conversation_id
        try:
            if self._phase != "open" or self._registry.entry(cid) is not None:
                return False
            stored = await self._starter.load(cid)
            # Checked again now: since the store was asked, a user may have woken and
            # stopped it, and nothing may be left to answer.
            if stored is None or not has_unanswered_work(stored):
                return False
            _, started, _ = await self._mailbox.ensure(cid, None, {}, False, trusted=True)
            return started
        except Exception as exc:
            _log.warning(
                "recovery_wake_failed",
                conversation_id=cid,
                agent_id=self._agent_id(cid),
                error=f"{type(exc).__name__}: {exc}",
            )
            return False

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
            actor, started, resume_error = await self._mailbox.ensure(
                cid, scope, opts, reroute, NO_RESUME if pending_resume is None else pending_resume
            )
        except RunningElsewhere:
            if pending_resume is not None:
                await self._mailbox.resume(cid, pending_resume, scope=scope, request_opts=opts)
            return SessionInfo(self._agent_id(cid), cid, False, None)
        if resume_error is not None:
            raise resume_error
        return SessionInfo(actor.agent_id, cid, started, actor.handle)

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
        # A live session's own limit applies (its factory may have raised it); before a
        # wake the supervisor's default is checked so nothing wakes for a refused message.
        check_content(content, (live.opts if live else self._defaults).max_message_bytes, cid)
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
    ) -> Status:
        """Answer the pending interrupt, waking the session if needed.

        Returns:
            The status once the answer was accepted (``running``).

        Raises:
            InvalidStatus: no interrupt is pending (``not_running`` when nothing
                is live or stored; nothing is created then).
            AccessDenied, RegistryUnavailable, the errors of ``start``.
        """
        cid = check_conversation_id(conversation_id)
        check_json(answer, "answer", conversation_id=cid)
        opts = check_request_opts(request_opts, conversation_id=cid)
        return await self._mailbox.resume(cid, answer, scope=scope, request_opts=opts)

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

    async def cancel(self, conversation_id: str, *, scope: Any = None) -> Status:
        """Cancel the running turn (anyio cancellation) and wait until it ended.

        Returns:
            The status afterwards (``cancelled``, unless the turn finished first).

        Raises:
            InvalidStatus: no turn runs (``not_running`` when nothing is live).
        """
        cid = check_conversation_id(conversation_id)
        return await self._mailbox.cancel(cid, scope=scope)

    async def stop(self, conversation_id: str, *, scope: Any = None) -> str:
        """Persist and stop the session.

        Returns:
            ``"stopped"``, or ``"not_running"`` when there was no live session.
        """
        cid = check_conversation_id(conversation_id)
        return await self._mailbox.stop(cid, scope=scope)

    async def running(self, conversation_id: str, *, scope: Any = None) -> bool:
        """True when a live session exists.

        Raises:
            RegistryUnavailable: the answer cannot be known (never a guessed False).
        """
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
        """Return the conversation's State: a copy of the live one, else the stored one.

        Raises:
            AccessDenied, CorruptStateError, RegistryUnavailable.
        """
        actor = self._local(conversation_id, scope)
        if actor is not None:
            return actor.handle.snapshot()
        stored = await self._store.load(conversation_id)
        if stored is None:
            return None
        self._check_owner(stored.owner, scope, conversation_id)
        return load_state(stored.state, conversation_id)

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
        if self._node is not None:
            metrics = attrs.evolve(metrics, cluster=self._node.metrics())
        return metrics

    def viewer_count(self, conversation_id: str) -> int:
        """How many ``viewing`` blocks are open for the conversation (this process)."""
        return self._registry.viewer_count(conversation_id)

    def subscriber_count(self, conversation_id: str) -> int:
        """How many subscriptions are open for the conversation (this process)."""
        topic = self._bus.existing(conversation_id)
        return 0 if topic is None else len(topic.subscribers)

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
        actor = self._local(cid, scope)
        topic: Topic
        status, interrupt = Status.NOT_RUNNING, None
        if actor is None:
            stored = await self._store.load(cid)
            if stored is not None:
                self._check_owner(stored.owner, scope, cid)
            # Served by another node (cluster mode): its stream knows the status.
            elsewhere = await self._bus.status_elsewhere(cid)
            if elsewhere is not None:
                status, interrupt = elsewhere
            actor = self._local(cid, scope)  # it may have started while we read the store
            if actor is None:
                topic = self._bus.topic(
                    cid,
                    self._agent_id(cid),
                    stored.last_seq if stored is not None else 0,
                    self._defaults.replay_buffer,
                )
        if actor is not None:
            topic = actor.topic
            status, interrupt = actor.status, actor.state.interrupt
        sub = self._bus.subscribe(
            topic,
            owner=self._owner_of(scope),
            capacity=(actor.opts if actor else self._defaults).subscriber_buffer,
            after=after,
            status=status,
            interrupt=interrupt,
        )
        try:
            yield sub
        finally:
            self._bus.unsubscribe(sub)
            self._bus.release(cid, self._registry.holds)
            live = self._registry.live(cid)
            if live is not None and not live.topic.subscribers:
                live.arm()  # nobody listens any more: it may hibernate

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
        self._registry.add_viewer(cid)
        try:
            yield
        finally:
            if not self._registry.remove_viewer(cid):
                actor = self._registry.live(cid)
                if actor is not None:
                    actor.viewers_left()
