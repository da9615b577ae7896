"""``SessionSupervisor``: the registry, the start pipeline, and the public calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import structlog

from .._clock import Clock, SystemClock
from .._errors import (
    AccessDenied,
    CorruptStateError,
    InvalidStatus,
    NotRunning,
    RegistryUnavailable,
    SessionFailedError,
)
from .._options import SupervisorOpts
from ..factories import SessionOpts, invoke_factory
from ..routers import FactoryRouter, check_request_opts, resolve_sticky
from ..state import MemoryStore, State, StateStore, StoredConversation, load_state
from ._actor import Actor, describe
from ._bus import LocalBus, Subscription
from ._events import Status
from ._handle import Delivery, SessionHandle, SessionInfo, SessionSummary
from ._runners import Runners
from ._timers import Deadlines
from ._validation import check_content, check_conversation_id

__all__ = ["SessionSupervisor", "default_owner_of"]

_log = structlog.get_logger("sessionvisor")
_ANY: Any = object()
_NO_RESUME: Any = object()  # None is a valid answer, so "no pending resume" needs its own value
# One shared empty mapping for the many sessions with no request options or extra;
# nothing in the runtime mutates either.
_EMPTY: dict[str, Any] = {}
_DRAINERS = 64  # sessions stopped at once while draining


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


class _Flight:
    """A start in progress; concurrent callers for the same conversation wait on it."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: Exception | None = None


class SessionSupervisor:
    """Keeps one supervised actor per conversation.

    Use it as an async context manager: it owns the task group every session runs
    in, and leaving it drains (running turns get ``shutdown_timeout``, every live
    session persists, then all stop).

    Args:
        router: picks the factory and config of each conversation.
        store: where conversations persist (default: a new ``MemoryStore``).
        agent_id: maps a conversation id to its agent id.
        supervisor_opts: defaults for every session (a mapping or ``SupervisorOpts``).
        owner_of: maps a trusted scope to its owner key.
        clock: time source (``sessionvisor.testing.ManualClock`` in tests).
        on_corrupt: ``"fail"`` (default) or ``"quarantine"`` an unreadable snapshot.
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
    ) -> None:
        if on_corrupt not in ("fail", "quarantine"):
            raise ValueError(f"on_corrupt must be 'fail' or 'quarantine', got {on_corrupt!r}")
        self._router = router
        self._store: StateStore = store if store is not None else MemoryStore()
        self._agent_id = agent_id or _default_agent_id
        self._defaults = SupervisorOpts().merged(supervisor_opts)
        self._owner_of = owner_of or default_owner_of
        self._clock: Clock = clock or SystemClock()
        self._on_corrupt = on_corrupt
        self._actors: dict[str, Actor] = {}
        self._flights: dict[str, _Flight] = {}
        self._viewers: dict[str, int] = {}
        self._bus = LocalBus()
        self._deadlines = Deadlines(self._clock)
        self._tg: anyio.abc.TaskGroup | None = None
        self._runners: Runners | None = None
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
        self._runners = Runners(self._tg)
        self._tg.start_soon(self._deadlines.run)
        self._phase = "open"
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._tg is not None
        self._phase = "draining"
        log = _log.bind(sessions=len(self._actors))
        log.info("supervisor_draining")
        try:
            with anyio.CancelScope(shield=True):
                while self._flights:
                    await next(iter(self._flights.values())).done.wait()
                # A bounded crew of drainers, not a task per session: a supervisor
                # holding 100,000 parked sessions must not need 100,000 tasks (and
                # their memory) to stop. Busy sessions go first, so their turns
                # start their shutdown_timeout at once.
                actors = sorted(self._actors.values(), key=lambda a: not a.busy)
                pending = iter(actors)

                async def drainer() -> None:
                    for actor in pending:
                        await actor.stop("drain")

                async with anyio.create_task_group() as tg:
                    for _ in range(min(_DRAINERS, len(actors))):
                        tg.start_soon(drainer)
                self._bus.close_all()
        finally:
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

    def _spawn(self, fn: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        assert self._runners is not None
        self._runners.submit(fn)

    # -- registry ------------------------------------------------------------------

    def _live(self, conversation_id: str) -> Actor | None:
        actor = self._actors.get(conversation_id)
        if actor is None or actor.closed:
            return None
        return actor

    def _forget(self, actor: Actor) -> None:
        cid = actor.conversation_id
        if self._actors.get(cid) is actor:
            del self._actors[cid]
        self._bus.release(cid, self._actors.__contains__)

    def _viewer_count(self, conversation_id: str) -> int:
        return self._viewers.get(conversation_id, 0)

    def _check_owner(self, owner: str | None, scope: Any, conversation_id: str) -> None:
        if owner is not None and self._owner_of(scope) != owner:
            raise AccessDenied(
                f"access to conversation {conversation_id!r} denied: "
                "it belongs to another owner"
            )

    async def _load(self, conversation_id: str) -> StoredConversation | None:
        try:
            return await self._store.load(conversation_id)
        except CorruptStateError:
            if self._on_corrupt != "quarantine":
                raise
            key = await self._store.quarantine(conversation_id)
            _log.warning(
                "corrupt_state_quarantined",
                conversation_id=conversation_id,
                agent_id=self._agent_id(conversation_id),
                quarantine_key=key,
            )
            return None

    # -- the start pipeline --------------------------------------------------------

    async def _ensure(
        self,
        cid: str,
        scope: Any,
        request_opts: dict[str, Any],
        reroute: bool,
        pending_resume: Any = _NO_RESUME,
    ) -> tuple[Actor, bool, Exception | None]:
        """Return the live actor of ``cid``, starting it (once) if needed."""
        while True:
            self._check_open(cid)
            actor = self._actors.get(cid)
            if actor is not None:
                if actor.closed:
                    await actor.wait_stopped()  # its final save must land before a new start
                    continue
                self._check_owner(actor.owner, scope, cid)
                return actor, False, None
            flight = self._flights.get(cid)
            if flight is not None:
                await flight.done.wait()
                if flight.error is not None:
                    raise flight.error
                continue
            flight = self._flights[cid] = _Flight()
            try:
                actor, resume_error = await self._boot(
                    cid, scope, request_opts, reroute, pending_resume
                )
            except Exception as exc:
                flight.error = exc
                raise
            finally:
                del self._flights[cid]
                flight.done.set()
            return actor, True, resume_error

    async def _boot(
        self,
        cid: str,
        scope: Any,
        request_opts: dict[str, Any],
        reroute: bool,
        pending_resume: Any,
    ) -> tuple[Actor, Exception | None]:
        stored = await self._load(cid)
        if stored is not None:
            self._check_owner(stored.owner, scope, cid)
            owner = stored.owner
        else:
            owner = self._owner_of(scope)
        route, recorded_opts = await resolve_sticky(
            self._router, scope, cid, request_opts, recorded=stored, reroute=reroute
        )
        agent_id = self._agent_id(cid)
        agent, session_opts = await invoke_factory(route.factory, agent_id, route.config)
        state = load_state(stored.state, cid) if stored is not None else _fresh(session_opts)
        opts = self._defaults.merged(session_opts.supervisor_opts)
        last_seq = stored.last_seq if stored is not None else 0
        topic = self._bus.topic(cid, agent_id, last_seq, opts.replay_buffer)
        actor = Actor(
            self,
            cid,
            agent_id,
            owner=owner,
            route_key=route.key,
            request_opts=recorded_opts or _EMPTY,
            scope=scope,
            agent=agent,
            opts=opts,
            extra=session_opts.extra or _EMPTY,
            state=state,
            version=stored.version if stored is not None else None,
            topic=topic,
        )
        if owner is not None:
            # Subscribers that came before the conversation existed may not be its owner.
            topic.deny_others(owner, cid)
        if stored is not None and (
            stored.route_key != route.key or stored.request_opts != recorded_opts
        ):
            actor._gen += 1  # the next save records the new route
        on_start = getattr(agent, "on_start", None)
        if on_start is not None:
            try:
                actor.state = await on_start(actor.state)
            except Exception as exc:
                if not await actor._restart(exc):
                    raise SessionFailedError(
                        f"conversation {cid!r} could not start: {describe(exc)}"
                    ) from exc
        if self._phase != "open":
            self._bus.release(cid, self._actors.__contains__)
            raise RegistryUnavailable("the session supervisor is draining")
        resume_error: Exception | None = None
        if pending_resume is not _NO_RESUME:
            if actor.state.interrupt is None:
                resume_error = InvalidStatus(
                    f"cannot resume conversation {cid!r}: its stored state holds no "
                    "interrupt; the answer was dropped",
                    actor.status.value,
                )
            else:
                actor.prepare_resume(pending_resume)
        self._actors[cid] = actor
        # The first broadcast: with a pending resume it is already `running`.
        actor._set_status(actor.status)
        actor.log().info(
            "session_started",
            started=True,
            route_key=route.key,
            restored=stored is not None,
        )
        # Messages left waiting when the process stopped mid-turn run now; ones that
        # were held (after an interrupt, pause, error or cancel) stay held.
        actor._hold = actor.state.interrupt is not None or (
            stored is not None and stored.lifecycle not in ("turn_start", "queued")
        )
        if actor._resume is not None:
            actor._hold = False
            actor._claim_worker()
        elif actor.state.queued and not actor._hold:
            actor._claim_worker()
        else:
            actor.arm()
        return actor, resume_error

    async def _reload(self, actor: Actor) -> None:
        """Rebuild a crashed actor from router, factory and store (never from memory)."""
        cid = actor.conversation_id
        stored = await self._load(cid)
        recorded = stored or StoredConversation(
            state={}, route_key=actor.route_key, request_opts=actor.request_opts
        )
        route, _ = await resolve_sticky(
            self._router, actor.scope, cid, {}, recorded=recorded, reroute=False
        )
        agent, session_opts = await invoke_factory(route.factory, actor.agent_id, route.config)
        state = load_state(stored.state, cid) if stored is not None else _fresh(session_opts)
        on_start = getattr(agent, "on_start", None)
        if on_start is not None:
            state = await on_start(state)
        # The mailbox survives the crash: queued messages the store has not seen come
        # along. Computed after the last await, so a send that raced the restart counts.
        known = {m.id for m in state.queued}
        known.update(m.id for m in state.messages)
        carried = [m for m in actor.state.queued if m.id not in known]
        state.queued.extend(carried)
        actor.agent = agent
        actor.opts = self._defaults.merged(session_opts.supervisor_opts)
        actor.extra = session_opts.extra or _EMPTY
        actor.state = state
        actor._version = stored.version if stored is not None else None
        actor._saved_gen = actor._gen
        if carried:
            actor._gen += 1

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
        opts = check_request_opts(request_opts)
        actor, started, resume_error = await self._ensure(
            cid, scope, opts, reroute, _NO_RESUME if pending_resume is None else pending_resume
        )
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
    ) -> Delivery:
        """Persist a user message and run (or queue) a turn; wakes the session if needed.

        Returns as soon as the message is accepted and saved, not when the reply is done.

        Raises:
            QueueFull, MessageRejected, AccessDenied, RegistryUnavailable, the
            errors of ``start``, and TypeError/ValueError for a bad id or content.
        """
        cid = check_conversation_id(conversation_id)
        live = self._live(cid)
        # A live session's own limit applies (its factory may have raised it); before a
        # wake the supervisor's default is checked so nothing wakes for a refused message.
        check_content(content, (live.opts if live else self._defaults).max_message_bytes, cid)
        opts = check_request_opts(request_opts)
        for attempt in range(3):
            actor, started, _ = await self._ensure(cid, scope, opts, reroute)
            try:
                queued = await actor.send(content, scope)
            except (NotRunning, SessionFailedError):
                # It stopped (or gave up) between lookup and delivery: wake it again
                # from the store.
                if attempt == 2:
                    raise
                continue
            return Delivery(queued=queued, started=started)
        raise AssertionError("unreachable")

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
        opts = check_request_opts(request_opts)
        self._check_open(cid)
        actor = self._live(cid)
        if actor is not None:
            self._check_owner(actor.owner, scope, cid)
            try:
                return await actor.resume(answer, scope)
            except NotRunning:
                pass
        stored = await self._load(cid)
        if stored is None and self._live(cid) is None:
            raise InvalidStatus(
                f"cannot resume conversation {cid!r}: it is not running and nothing is stored",
                Status.NOT_RUNNING.value,
            )
        if stored is not None:
            self._check_owner(stored.owner, scope, cid)
        actor, started, resume_error = await self._ensure(cid, scope, opts, False, answer)
        if resume_error is not None:
            raise resume_error
        if not started:
            # Someone else woke it between our live attempt and the wake.
            return await actor.resume(answer, scope)
        return actor.status

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
        opts = check_request_opts(request_opts)
        self._check_open(cid)
        actor = self._live(cid)
        if actor is None:
            stored = await self._load(cid)
            if stored is None:
                raise InvalidStatus(
                    f"cannot dismiss conversation {cid!r}: it is not running and nothing "
                    "is stored",
                    Status.NOT_RUNNING.value,
                )
            self._check_owner(stored.owner, scope, cid)
            interrupt = load_state(stored.state, cid).interrupt
            if interrupt is None or interrupt.kind != "notice":
                raise InvalidStatus(
                    f"cannot dismiss conversation {cid!r}: it has no 'notice' interrupt",
                    Status.NOT_RUNNING.value,
                )
        actor, _, _ = await self._ensure(cid, scope, opts, False)
        return await actor.dismiss(scope)

    async def cancel(self, conversation_id: str, *, scope: Any = None) -> Status:
        """Cancel the running turn (anyio cancellation) and wait until it ended.

        Returns:
            The status afterwards (``cancelled``, unless the turn finished first).

        Raises:
            InvalidStatus: no turn runs (``not_running`` when nothing is live).
        """
        cid = check_conversation_id(conversation_id)
        self._check_open(cid)
        actor = self._live(cid)
        if actor is None:
            raise InvalidStatus(
                f"cannot cancel conversation {cid!r}: status is not_running",
                Status.NOT_RUNNING.value,
            )
        self._check_owner(actor.owner, scope, cid)
        return await actor.cancel()

    async def stop(self, conversation_id: str, *, scope: Any = None) -> str:
        """Persist and stop the session.

        Returns:
            ``"stopped"``, or ``"not_running"`` when there was no live session.
        """
        cid = check_conversation_id(conversation_id)
        self._check_open(cid)
        actor = self._actors.get(cid)
        if actor is None:
            return "not_running"
        self._check_owner(actor.owner, scope, cid)
        if actor.closed and actor._stop_reason is None:
            return "not_running"
        await actor.stop("stopped")
        return "stopped"

    async def running(self, conversation_id: str, *, scope: Any = None) -> bool:
        """True when a live session exists.

        Raises:
            RegistryUnavailable: the answer cannot be known (never a guessed False).
        """
        cid = check_conversation_id(conversation_id)
        self._check_open(cid)
        actor = self._live(cid)
        if actor is not None:
            self._check_owner(actor.owner, scope, cid)
        return actor is not None

    async def status(self, conversation_id: str, *, scope: Any = None) -> Status:
        """Return the live status, or ``not_running``."""
        cid = check_conversation_id(conversation_id)
        self._check_open(cid)
        actor = self._live(cid)
        if actor is None:
            return Status.NOT_RUNNING
        self._check_owner(actor.owner, scope, cid)
        return actor.status

    def get(self, conversation_id: str, *, scope: Any = None) -> SessionHandle | None:
        """Return the live session's handle, or None (local sessions only)."""
        cid = check_conversation_id(conversation_id)
        self._check_open(cid)
        actor = self._live(cid)
        if actor is None:
            return None
        self._check_owner(actor.owner, scope, cid)
        return actor.handle

    async def list_running(self, *, scope: Any = _ANY) -> list[SessionSummary]:
        """Summaries of the live sessions; with ``scope``, only those that scope owns."""
        self._check_open()
        owner = _ANY if scope is _ANY else self._owner_of(scope)
        return [
            actor.handle.info()
            for actor in list(self._actors.values())
            if not actor.closed and (owner is _ANY or actor.owner == owner)
        ]

    async def load(self, conversation_id: str, *, scope: Any = None) -> State | None:
        """Return the conversation's State: a copy of the live one, else the stored one.

        Raises:
            AccessDenied, CorruptStateError, RegistryUnavailable.
        """
        cid = check_conversation_id(conversation_id)
        self._check_open(cid)
        actor = self._live(cid)
        if actor is not None:
            self._check_owner(actor.owner, scope, cid)
            return actor.handle.snapshot()
        stored = await self._store.load(cid)
        if stored is None:
            return None
        self._check_owner(stored.owner, scope, cid)
        return load_state(stored.state, cid)

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
        cid = check_conversation_id(conversation_id)
        self._check_open(cid)
        actor = self._live(cid)
        if actor is not None:
            self._check_owner(actor.owner, scope, cid)
            return True
        stored = await self._store.load(cid)
        if stored is None:
            return False
        self._check_owner(stored.owner, scope, cid)
        return True

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
        self._check_open(cid)
        actor = self._live(cid)
        if actor is None:
            stored = await self._store.load(cid)
            if stored is not None:
                self._check_owner(stored.owner, scope, cid)
            actor = self._live(cid)  # it may have started while we read the store
            if actor is None:
                topic = self._bus.topic(
                    cid,
                    self._agent_id(cid),
                    stored.last_seq if stored is not None else 0,
                    self._defaults.replay_buffer,
                )
        if actor is not None:
            self._check_owner(actor.owner, scope, cid)
            topic = actor.topic
        sub = self._bus.subscribe(
            topic,
            owner=self._owner_of(scope),
            capacity=(actor.opts if actor else self._defaults).subscriber_buffer,
            after=after,
            status=actor.status if actor else Status.NOT_RUNNING,
            interrupt=actor.state.interrupt if actor else None,
        )
        try:
            yield sub
        finally:
            self._bus.unsubscribe(sub)
            self._bus.release(cid, self._actors.__contains__)
            live = self._live(cid)
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
        self._viewers[cid] = self._viewers.get(cid, 0) + 1
        try:
            yield
        finally:
            left = self._viewers[cid] - 1
            if left:
                self._viewers[cid] = left
            else:
                del self._viewers[cid]
                actor = self._live(cid)
                if actor is not None:
                    actor.viewers_left()


def _fresh(session_opts: SessionOpts) -> State:
    return State.model_validate(dict(session_opts.fresh_state_attrs))
