"""The start pipeline: store, router and factory make an actor; and make it again.

``build`` loads what the store holds (an unreadable row fails the start or is
quarantined, never silently replaced), resolves the route (sticky: the recorded
route and request options win unless ``reroute``), calls the factory, seeds or
restores the State and makes the actor. ``rebuild`` does the same for a crashed
actor, always from the store, never from the crashed copy in memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from .._errors import (
    AccessDenied,
    CorruptStateError,
    InvalidStatus,
    NotRunning,
    RegistryUnavailable,
    SessionFailedError,
    StaleWriteError,
)
from .._options import SupervisorOpts
from .._telemetry import span
from ..factories import SessionOpts, invoke_factory
from ..routers import resolve_sticky
from ..state import Message, State, StateStore, StoredConversation, load_state
from ._actor import Actor
from ._events import describe
from ._host import Rebuilt
from ._intake import held_after_boot
from ._restarts import restart_by_policy

if TYPE_CHECKING:
    from ._host import ActorHost
    from ._seams import Bus

__all__: list[str] = ["NO_RESUME", "Creation", "Starter", "check_owner"]


@attrs.frozen
class Creation:
    """A trusted wake may create the conversation, for this owner key (or none)."""

    owner: str | None


_log = structlog.get_logger("sessionvisor")

NO_RESUME: Any = object()  # None is a valid answer, so "no pending resume" needs its own value
# One shared empty mapping for the many sessions with no request options or extra;
# nothing in the runtime mutates either.
_EMPTY: dict[str, Any] = {}


def check_owner(
    owner_of: Callable[[Any], str | None], owner: str | None, *, scope: Any, conversation_id: str
) -> None:
    """Raise AccessDenied when ``scope`` may not touch a conversation owned by ``owner``."""
    if owner is not None and owner_of(scope) != owner:
        raise AccessDenied(
            f"access to conversation {conversation_id!r} denied: it belongs to another owner"
        )


@attrs.frozen
class Built:
    """A started actor, and the refusal its pending resume met, if any."""

    actor: Actor
    resume_refused: InvalidStatus | None


class Starter:
    """Makes actors; owned by one supervisor."""

    def __init__(
        self,
        *,
        router: Any,
        store: StateStore,
        agent_id: Callable[[str], str],
        owner_of: Callable[[Any], str | None],
        defaults: SupervisorOpts,
        on_corrupt: str,
        bus: Bus,
        host: ActorHost,
        is_open: Callable[[], bool],
    ) -> None:
        self._router = router
        self._store = store
        self._agent_id = agent_id
        self._owner_of = owner_of
        self._defaults = defaults
        self._on_corrupt = on_corrupt
        self._bus = bus
        self._host = host
        self._is_open = is_open

    @property
    def defaults(self) -> SupervisorOpts:
        """The supervisor-wide session options."""
        return self._defaults

    @property
    def host(self) -> ActorHost:
        """What the actors this starter makes see of the supervisor."""
        return self._host

    async def load(self, conversation_id: str) -> StoredConversation | None:
        """Load a conversation, quarantining an unreadable row if so configured.

        Raises:
            CorruptStateError: the row cannot be read, and either quarantine is
                off or the store refused to move it (``StaleWriteError`` from its
                ``quarantine``: in a cluster, this node does not hold the lease).
        """
        try:
            return await self._store.load(conversation_id)
        except CorruptStateError as corrupt:
            if self._on_corrupt != "quarantine":
                raise
            try:
                key = await self._store.quarantine(conversation_id)
            except StaleWriteError as refused:
                # Another writer holds the conversation (in a cluster: a node that
                # is not the lease holder may not move it aside). The caller gets
                # the unreadable record's error; the record stays where it is.
                _log.warning(
                    "corrupt_state_not_quarantined",
                    conversation_id=conversation_id,
                    agent_id=self._agent_id(conversation_id),
                    reason=str(refused),
                )
                raise corrupt from refused
            _log.warning(
                "corrupt_state_quarantined",
                conversation_id=conversation_id,
                agent_id=self._agent_id(conversation_id),
                quarantine_key=key,
            )
            return None

    async def build(
        self,
        cid: str,
        *,
        scope: Any,
        request_opts: dict[str, Any],
        reroute: bool,
        pending_resume: Any,
        still_live: Callable[[str], bool],
        check_access: bool = True,
        create_for: Creation | None = None,
    ) -> Built:
        """Make the conversation's actor and bring it live.

        A pending resume that meets a stored state with no interrupt does not
        stop the start: the session goes live and ``Built.resume_refused`` says
        why the answer was dropped (the mailbox raises it once the registry
        holds the actor).
        """
        stored = await self.load(cid)
        if stored is not None:
            if check_access:
                check_owner(self._owner_of, stored.owner, scope=scope, conversation_id=cid)
            owner = stored.owner
        elif not check_access:
            if create_for is None:
                # The runtime's own wake (recovery) never creates a conversation...
                raise NotRunning(f"conversation {cid!r}: nothing is stored to recover")
            owner = create_for.owner  # ...unless it carries a message stored for it
        elif create_for is not None:
            raise TypeError("create_for is only for the runtime's own (trusted) wake")
        else:
            owner = self._owner_of(scope)
        agent_id = self._agent_id(cid)
        with span("sessionvisor.router", cid, agent_id):
            route, recorded_opts = await resolve_sticky(
                self._router, scope, cid, request_opts, recorded=stored, reroute=reroute
            )
        with span("sessionvisor.factory", cid, agent_id, route_key=route.key):
            agent, session_opts = await invoke_factory(route.factory, agent_id, route.config)
        state = load_state(stored.state, cid) if stored is not None else _fresh(session_opts)
        opts = self._defaults.merged(session_opts.supervisor_opts)
        last_seq = stored.last_seq if stored is not None else 0
        topic = self._bus.topic(cid, agent_id, last_seq, opts.replay_buffer)
        actor = Actor(
            self._host,
            conversation_id=cid,
            agent_id=agent_id,
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
            actor.mark_changed()  # the next save records the new route
        await run_on_start(actor)
        if not self._is_open():
            self._bus.release(cid, still_live)
            raise RegistryUnavailable("the session supervisor is draining")
        resume_error: InvalidStatus | None = None
        stored_interrupt = actor.state.interrupt
        if stored_interrupt is not None and stored_interrupt.answered:
            # An acknowledged answer whose turn was cut (the process died): carried
            # out now, and the question is not asked again. A new answer is too late.
            actor.prepare_resume(stored_interrupt.answer)
            if pending_resume is not NO_RESUME:
                resume_error = InvalidStatus(
                    f"cannot resume conversation {cid!r}: its interrupt was answered "
                    "already; the answer was dropped",
                    actor.status.value,
                )
        elif pending_resume is not NO_RESUME:
            if actor.state.interrupt is None:
                resume_error = InvalidStatus(
                    f"cannot resume conversation {cid!r}: its stored state holds no "
                    "interrupt; the answer was dropped",
                    actor.status.value,
                )
            else:
                actor.prepare_resume(pending_resume)
        self._host.stats.sessions_started += 1
        actor.log().info(
            "session_started", started=True, route_key=route.key, restored=stored is not None
        )
        go_live(
            actor,
            stored_lifecycle=stored.lifecycle if stored is not None else None,
            restored=stored is not None,
        )
        return Built(actor=actor, resume_refused=resume_error)

    async def rebuild(self, actor: Actor) -> Rebuilt:
        """Consult router and factory again and reload the State from the store."""
        cid = actor.conversation_id
        stored = await self.load(cid)
        recorded = stored or StoredConversation(
            state={}, route_key=actor.route_key, request_opts=actor.request_opts
        )
        with span("sessionvisor.router", cid, actor.agent_id):
            route, _ = await resolve_sticky(
                self._router, actor.scope, cid, {}, recorded=recorded, reroute=False
            )
        with span("sessionvisor.factory", cid, actor.agent_id, route_key=route.key):
            agent, session_opts = await invoke_factory(route.factory, actor.agent_id, route.config)
        state = load_state(stored.state, cid) if stored is not None else _fresh(session_opts)
        on_start: Callable[[State], Awaitable[State]] | None = getattr(agent, "on_start", None)
        if on_start is not None:
            state = await on_start(state)
        return Rebuilt(
            agent=agent,
            opts=self._defaults.merged(session_opts.supervisor_opts),
            extra=session_opts.extra or _EMPTY,
            state=state,
            version=stored.version if stored is not None else None,
        )


def _fresh(session_opts: SessionOpts) -> State:
    return State.model_validate(dict(session_opts.fresh_state_attrs))


async def run_on_start(actor: Actor) -> None:
    """Run the agent's ``on_start`` hook, restarting by policy when it raises.

    Raises:
        SessionFailedError: the policy gave up.
    """
    on_start = getattr(actor.agent, "on_start", None)
    if on_start is None:
        return
    try:
        actor.replace_state(await on_start(actor.state))
    except Exception as exc:
        if not await restart_by_policy(actor, exc):
            raise SessionFailedError(
                f"conversation {actor.conversation_id!r} could not start: {describe(exc)}"
            ) from exc


def go_live(actor: Actor, *, stored_lifecycle: str | None, restored: bool) -> None:
    """Announce the first status and start whatever work was left waiting."""
    # The first broadcast: with a pending resume it is already `running`.
    actor.set_status(actor.status)
    state = actor.state
    actor.hold_queue(held_after_boot(state, stored_lifecycle=stored_lifecycle, restored=restored))
    if actor.turn.resume is not None:
        actor.hold_queue(False)
        actor.claim_worker()
    elif (
        stored_lifecycle == "turn_start"
        and state.interrupt is None
        and state.messages
        and state.messages[-1].role == "user"
    ):
        # The process died mid-turn (the last save was made while a turn ran: at its
        # start, or for a message queued behind it): the turn's user messages end the
        # history unanswered. Run that turn again (a turn is at-least-once), then the
        # queue.
        actor.rerun_unfinished_turn(taken=_trailing_user_messages(state.messages))
    elif actor.queue_ready:
        actor.claim_worker()
    else:
        actor.arm()


def _trailing_user_messages(messages: list[Message]) -> int:
    count = 0
    for message in reversed(messages):
        if message.role != "user":
            break
        count += 1
    return count
