"""The local mailbox: how a command reaches the session that owns a conversation.

In one process the owner is the live actor in the registry; a command for a
conversation with no live actor wakes it first (through the registry's single
flight and the start pipeline), then is delivered. Ownership (the trusted
scope) is checked before anything is created or changed.

The rules a command meets before anything wakes (``require_interrupt``,
``require_notice``) and the delivery of a message with its retries
(``LocalMailbox.deliver``) live here once; a cluster's mailbox uses them
through ``sessions.spi``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from .._errors import InvalidStatus, NotRunning, SessionFailedError
from ..state import PendingInterrupt, StoredConversation, load_state
from ._boot import NO_RESUME, Creation, Starter, check_owner
from ._events import Status
from ._handle import Delivery
from ._seams import Reached, Registry
from ._validation import require_interrupt, require_notice

if TYPE_CHECKING:
    from ._actor import Actor

__all__: list[str] = ["LocalMailbox", "stored_interrupt"]

_ATTEMPTS = 3  # a session that stops between lookup and delivery is woken again


def stored_interrupt(stored: StoredConversation | None, cid: str) -> PendingInterrupt | None:
    return None if stored is None else load_state(stored.state, cid).interrupt


class LocalMailbox:
    """Implements ``Mailbox`` for one process (see ``_seams.Mailbox``)."""

    def __init__(
        self,
        *,
        registry: Registry,
        starter: Starter,
        owner_of: Callable[[Any], str | None],
        check_open: Callable[[str], None],
    ) -> None:
        self._registry = registry
        self._starter = starter
        self._owner_of = owner_of
        self._check_open = check_open

    @property
    def starter(self) -> Starter:
        """The start pipeline this mailbox wakes conversations with."""
        return self._starter

    @property
    def owner_of(self) -> Callable[[Any], str | None]:
        return self._owner_of

    @property
    def check_open(self) -> Callable[[str], None]:
        """Raises ``RegistryUnavailable`` unless the supervisor is open."""
        return self._check_open

    def _check_owner(self, owner: str | None, scope: Any, cid: str) -> None:
        check_owner(self._owner_of, owner, scope=scope, conversation_id=cid)

    async def ensure(
        self,
        conversation_id: str,
        *,
        scope: Any,
        request_opts: dict[str, Any] | None = None,
        reroute: bool = False,
        pending_resume: Any = NO_RESUME,
        trusted: bool = False,
        create_for: Creation | None = None,
    ) -> Reached:
        """Return the live actor of the conversation, starting it (once) if needed.

        ``trusted`` skips the ownership check: the runtime's own wake (recovery).
        ``create_for`` (with ``trusted``) lets that wake create a conversation that
        nothing stores yet, owned by ``create_for.owner``: a cluster applying a
        message stored for it whose first owner died before its first save.

        Raises:
            InvalidStatus: a ``pending_resume`` met a stored state with no interrupt
                (the session started all the same).
        """
        cid = conversation_id
        self._check_open(cid)
        live = self._registry.live(cid)
        if live is not None:  # the common case: nothing to start
            if not trusted:
                self._check_owner(live.owner, scope, cid)
            return Reached(actor=live, started=False)
        start = _Start(
            self._starter,
            cid,
            scope=scope,
            request_opts=request_opts or {},
            reroute=reroute,
            pending_resume=pending_resume,
            still_live=self._registry.holds,
            check_access=not trusted,
            create_for=create_for,
        )
        reached = await self._registry.ensure(cid, start.run)
        if not reached.started and not trusted:
            self._check_owner(reached.actor.owner, scope, cid)
        if start.resume_refused is not None:
            raise start.resume_refused
        return reached

    async def deliver(
        self,
        conversation_id: str,
        content: Any,
        *,
        scope: Any,
        request_opts: dict[str, Any],
        reroute: bool,
        message_id: str | None,
        first: Callable[[str, Actor], Awaitable[None]] | None = None,
    ) -> Delivery:
        """Reach the session and hand it the message; ``first`` runs just before
        (a cluster applies the commands stored earlier for the conversation).

        A session that stopped (or gave up) between lookup and delivery is woken
        again from the store, at most ``_ATTEMPTS`` times in all.
        """
        cid = conversation_id
        for attempt in range(1, _ATTEMPTS + 1):
            reached = await self.ensure(
                cid, scope=scope, request_opts=request_opts, reroute=reroute
            )
            actor = reached.actor
            try:
                if first is not None:
                    await first(cid, actor)
                accepted = await actor.send(content, scope, message_id=message_id)
            except (NotRunning, SessionFailedError):
                if attempt == _ATTEMPTS:
                    raise
                continue
            return Delivery(
                queued=accepted.queued, started=reached.started, duplicate=accepted.duplicate
            )
        raise AssertionError("unreachable")

    async def send(
        self,
        conversation_id: str,
        content: Any,
        *,
        scope: Any,
        request_opts: dict[str, Any],
        reroute: bool,
        message_id: str | None,
    ) -> Delivery:
        return await self.deliver(
            conversation_id,
            content,
            scope=scope,
            request_opts=request_opts,
            reroute=reroute,
            message_id=message_id,
        )

    async def resume(
        self,
        conversation_id: str,
        answer: Any,
        *,
        scope: Any,
        request_opts: dict[str, Any],
        interrupt_id: str | None = None,
    ) -> Status:
        cid = conversation_id
        self._check_open(cid)
        actor = self._registry.live(cid)
        if actor is not None:
            self._check_owner(actor.owner, scope, cid)
            try:
                return await actor.resume(answer, scope, interrupt_id=interrupt_id)
            except NotRunning:
                pass
        stored = await self._starter.load(cid)
        if stored is None and self._registry.live(cid) is None:
            raise InvalidStatus(
                f"cannot resume conversation {cid!r}: it is not running and nothing is stored",
                Status.NOT_RUNNING.value,
            )
        if stored is not None:
            self._check_owner(stored.owner, scope, cid)
            if interrupt_id is not None:
                pending = stored_interrupt(stored, cid)
                if pending is None or pending.answered:
                    pending = None  # no question, or one whose answer is being carried out
                require_interrupt(
                    cid, pending, status=Status.NOT_RUNNING, interrupt_id=interrupt_id
                )
        reached = await self.ensure(
            cid, scope=scope, request_opts=request_opts, pending_resume=answer
        )
        if not reached.started:
            # Someone else woke it between our live attempt and the wake.
            return await reached.actor.resume(answer, scope, interrupt_id=interrupt_id)
        await reached.actor.store_answer()
        return reached.actor.status

    async def dismiss(
        self, conversation_id: str, *, scope: Any, request_opts: dict[str, Any]
    ) -> Status:
        cid = conversation_id
        self._check_open(cid)
        if self._registry.live(cid) is None:
            stored = await self._starter.load(cid)
            if stored is None:
                raise InvalidStatus(
                    f"cannot dismiss conversation {cid!r}: it is not running and nothing is stored",
                    Status.NOT_RUNNING.value,
                )
            self._check_owner(stored.owner, scope, cid)
            require_notice(cid, stored_interrupt(stored, cid), status=Status.NOT_RUNNING)
        reached = await self.ensure(cid, scope=scope, request_opts=request_opts)
        return await reached.actor.dismiss(scope)

    async def cancel(
        self, conversation_id: str, *, scope: Any, keep_partial: bool = False
    ) -> Status:
        cid = conversation_id
        self._check_open(cid)
        actor = self._registry.live(cid)
        if actor is None:
            raise InvalidStatus(
                f"cannot cancel conversation {cid!r}: status is not_running",
                Status.NOT_RUNNING.value,
            )
        self._check_owner(actor.owner, scope, cid)
        return await actor.cancel(keep_partial=keep_partial)

    async def rewrite(
        self,
        conversation_id: str,
        *,
        message_id: str | None,
        content: Any,
        edit: bool,
        scope: Any,
    ) -> str:
        cid = conversation_id
        self._check_open(cid)
        if self._registry.live(cid) is None:
            stored = await self._starter.load(cid)
            if stored is None:
                raise InvalidStatus(
                    f"cannot {'edit' if edit else 'regenerate'} conversation {cid!r}: "
                    "it is not running and nothing is stored",
                    Status.NOT_RUNNING.value,
                )
            self._check_owner(stored.owner, scope, cid)
        for attempt in range(1, _ATTEMPTS + 1):
            actor = (await self.ensure(cid, scope=scope)).actor
            try:
                return await actor.rewrite(message_id, content, scope, edit=edit)
            except (NotRunning, SessionFailedError):
                if attempt == _ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def stop(self, conversation_id: str, *, scope: Any) -> str:
        cid = conversation_id
        self._check_open(cid)
        actor = self._registry.entry(cid)
        if actor is None:
            return "not_running"
        self._check_owner(actor.owner, scope, cid)
        if actor.closed and actor.life.reason is None:
            return "not_running"
        await actor.stop()
        return "stopped"


@attrs.define
class _Start:
    """One start through the registry's single flight. The registry keeps the
    actor; the refusal its pending resume met is kept here for the caller that
    made the start, which raises it."""

    starter: Starter
    cid: str
    scope: Any
    request_opts: dict[str, Any]
    reroute: bool
    pending_resume: Any
    still_live: Callable[[str], bool]
    check_access: bool
    create_for: Creation | None = None
    resume_refused: InvalidStatus | None = None

    async def run(self) -> Actor:
        built = await self.starter.build(
            self.cid,
            scope=self.scope,
            request_opts=self.request_opts,
            reroute=self.reroute,
            pending_resume=self.pending_resume,
            still_live=self.still_live,
            check_access=self.check_access,
            create_for=self.create_for,
        )
        self.resume_refused = built.resume_refused
        return built.actor
