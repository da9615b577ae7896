"""How a command reaches the owner of a conversation anywhere in the cluster.

A node serves a conversation only while it holds the lease (``ClusterRegistry``
takes it before a session starts and gives it up when the session ends). A
command for a conversation that another live node serves is a row in the
PostgreSQL inbox, committed before the call returns, and a Redis wake-up for
that node; the owner applies the rows in order. Every ``send`` row carries a
message id (the client's, or one assigned here), and the conversation keeps
the ids it accepted, so a row applied twice (the owner died between applying
and deleting it) changes nothing the second time. A resume or dismiss row
carries the interrupt it answers and is refused when another one is pending;
a cancel or stop row applied again cancels or stops again. A regenerate or edit
row carries the id of the message it asks (made here and returned at once), so
applied again it changes nothing; the owner waits for a turn started before it.

On the owner, the inbox rows of a conversation are applied before each send
that arrives there directly (one query, shared by the sends in flight, finds
out whether there are any), so a client that sends to node A and then to node
B sees its messages in that order.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs
import structlog

from .._errors import CorruptStateError, InvalidStatus, UnknownMessage
from ..sessions import Delivery, Status
from ..sessions.spi import (
    NO_RESUME,
    LocalMailbox,
    Reached,
    Registry,
    RunningElsewhere,
    Session,
    Starter,
    check_owner,
    check_stored_rewrite,
    require_interrupt,
    require_notice,
    stored_interrupt,
)
from ..state import PendingInterrupt
from ._inbox import CommandKind, Inbox
from ._ownership import Leases, OwnedElsewhere, unavailable
from ._pg import monotonic
from ._serving import InboxServer
from ._wakeups import Wakeups

__all__: list[str] = ["ClusterMailbox"]

_log = structlog.get_logger("sessionvisor")
_RECENT_LIMIT = 10_000  # conversations remembered as served elsewhere
# Owner wake-ups in flight at once (one per conversation): past this, a post
# relies on its NOTIFY and on the sweeper, so a burst while Redis is down cannot
# pile up tasks.
_MAX_WAKES = 256


class ClusterMailbox:
    """Implements ``Mailbox`` across nodes (see the module docstring)."""

    def __init__(
        self,
        local: LocalMailbox,
        *,
        server: InboxServer,
        registry: Registry,
        starter: Starter,
        leases: Leases,
        inbox: Inbox,
        wakeups: Wakeups,
        owner_of: Callable[[Any], str | None],
        check_open: Callable[[str], None],
        spawn: Callable[..., None],
        recent_for: float,
        header: Callable[[str], Awaitable[Any]] | None = None,
    ) -> None:
        self._local = local
        self._registry = registry
        self._starter = starter
        self._leases = leases
        self._inbox = inbox
        self._wakeups = wakeups
        self._owner_of = owner_of
        self._check_open = check_open
        self._spawn = spawn
        self._server = server
        self._recent: dict[str, tuple[str | None, str | None, float]] = {}
        self._recent_for = recent_for
        self._header = header
        self._waking: set[str] = set()  # conversations whose owner a task is waking
        self.posted = 0  # commands stored for another node

    # -- the calls -----------------------------------------------------------------

    async def ensure(
        self,
        conversation_id: str,
        *,
        scope: Any,
        request_opts: dict[str, Any] | None = None,
        reroute: bool = False,
        pending_resume: Any = NO_RESUME,
        trusted: bool = False,
    ) -> Reached:
        cid = conversation_id
        try:
            return await self._local.ensure(
                cid,
                scope=scope,
                request_opts=request_opts,
                reroute=reroute,
                pending_resume=pending_resume,
                trusted=trusted,
            )
        except OwnedElsewhere as exc:
            if not trusted:
                await self._stored_for(cid, scope)
            raise RunningElsewhere(cid, exc.node_id) from None

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
        cid = conversation_id
        elsewhere = self._elsewhere(cid)
        try:
            if elsewhere is not None:
                check_owner(self._owner_of, elsewhere[1], scope=scope, conversation_id=cid)
                raise OwnedElsewhere(cid, elsewhere[0])
            # On the owner, the commands stored before this one go first.
            return await self._local.deliver(
                cid,
                content,
                scope=scope,
                request_opts=request_opts,
                reroute=reroute,
                message_id=message_id,
                first=self._server.apply_earlier,
            )
        except OwnedElsewhere as exc:
            if elsewhere is None:
                stored = await self._stored_for(cid, scope)
                if stored is not None:
                    self._remember(cid, exc.node_id, stored.owner)
            mid = message_id or "msg-" + secrets.token_hex(12)
            created = await self._post(
                cid, "send", {"content": content}, scope, exc.node_id, command_id=mid
            )
            return Delivery(queued=True, started=False, duplicate=not created)

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
        try:
            await self._earlier_first(cid, scope=scope, request_opts=request_opts)
            return await self._local.resume(
                cid, answer, scope=scope, request_opts=request_opts, interrupt_id=interrupt_id
            )
        except OwnedElsewhere as exc:
            stored = await self._stored_for(cid, scope)
            interrupt = require_interrupt(
                cid, _unanswered(stored), status=Status.RUNNING, interrupt_id=interrupt_id
            )
            # The question answered goes along: applied again after a crash, the row
            # must not answer a later question.
            payload = {"answer": answer, "interrupt": interrupt.model_dump(mode="json")}
            await self._post(cid, "resume", payload, scope, exc.node_id)
            return Status.RUNNING

    async def dismiss(
        self, conversation_id: str, *, scope: Any, request_opts: dict[str, Any]
    ) -> Status:
        cid = conversation_id
        try:
            await self._earlier_first(cid, scope=scope, request_opts=request_opts)
            return await self._local.dismiss(cid, scope=scope, request_opts=request_opts)
        except OwnedElsewhere as exc:
            stored = await self._stored_for(cid, scope)
            interrupt = require_notice(cid, _unanswered(stored), status=Status.RUNNING)
            payload = {"interrupt": interrupt.model_dump(mode="json")}
            await self._post(cid, "dismiss", payload, scope, exc.node_id)
            return Status.IDLE

    async def cancel(
        self, conversation_id: str, *, scope: Any, keep_partial: bool = False
    ) -> Status:
        cid = conversation_id
        self._check_open(cid)
        actor = self._registry.live(cid)
        if actor is not None:
            await self._apply_earlier(cid, actor, scope)
            return await self._local.cancel(cid, scope=scope, keep_partial=keep_partial)
        owner = await self._owner_node(cid)
        if owner is None:
            raise InvalidStatus(
                f"cannot cancel conversation {cid!r}: status is not_running",
                Status.NOT_RUNNING.value,
            )
        await self._stored_for(cid, scope)
        await self._post(cid, "cancel", {"keep_partial": keep_partial}, scope, owner)
        return Status.CANCELLED

    async def rewrite(
        self,
        conversation_id: str,
        *,
        message_id: str | None,
        content: Any,
        edit: bool,
        scope: Any,
    ) -> str:
        """On the owner (or a node that can take the conversation): as in one process,
        after the commands stored earlier. For a conversation another node serves, the
        command is checked against the stored conversation, then stored for the owner
        with the id of the message it asks (made here, so the caller gets it now)."""
        cid = conversation_id
        try:
            await self._earlier_first(cid, scope=scope, request_opts=None)
            return await self._local.rewrite(
                cid, message_id=message_id, content=content, edit=edit, scope=scope
            )
        except OwnedElsewhere as exc:
            stored = await self._starter.load(cid)
            if stored is not None:
                check_owner(self._owner_of, stored.owner, scope=scope, conversation_id=cid)
            try:
                check_stored_rewrite(stored, message_id, conversation_id=cid, edit=edit)
            except UnknownMessage:
                # A message acknowledged but still in the inbox: not answered yet.
                if message_id is None or not await self._send_waiting(cid, message_id):
                    raise
                call = "edit" if edit else "regenerate"
                raise InvalidStatus(
                    f"cannot {call} message {message_id!r} of conversation {cid!r}: it waits "
                    "to be taken by the node serving the conversation, and has not been "
                    "answered yet",
                    Status.RUNNING.value,
                ) from None
            asked = secrets.token_hex(16)  # the form of the runtime's own message ids
            payload: dict[str, Any] = {"message_id": message_id}
            if edit:
                payload["content"] = content
            kind: CommandKind = "edit" if edit else "regenerate"
            await self._post(cid, kind, payload, scope, exc.node_id, command_id=asked)
            return asked

    async def stop(self, conversation_id: str, *, scope: Any) -> str:
        cid = conversation_id
        self._check_open(cid)
        if self._registry.entry(cid) is not None:
            actor = self._registry.live(cid)
            if actor is not None:
                await self._apply_earlier(cid, actor, scope)
            return await self._local.stop(cid, scope=scope)
        owner = await self._owner_node(cid)
        if owner is None:
            return "not_running"
        await self._stored_for(cid, scope)
        await self._post(cid, "stop", {}, scope, owner)
        return "stopped"

    async def _earlier_first(
        self, cid: str, *, scope: Any, request_opts: dict[str, Any] | None
    ) -> None:
        """Apply the commands stored for the conversation before this call, so that
        every command takes effect in the order it was acknowledged, whichever node
        took it. A conversation with stored commands and no live session is started
        here for them (``OwnedElsewhere`` when another node serves it: the caller
        posts, behind those commands)."""
        actor = self._registry.live(cid)
        if actor is None:
            if not await self._server.has_pending(cid):
                return
            actor = (await self._local.ensure(cid, scope=scope, request_opts=request_opts)).actor
        await self._apply_earlier(cid, actor, scope)

    async def _apply_earlier(self, cid: str, actor: Session, scope: Any) -> None:
        """On the owner: check the caller's owner key, then apply the commands stored
        for the conversation before this call (see ``InboxServer.apply_earlier``)."""
        check_owner(self._owner_of, actor.owner, scope=scope, conversation_id=cid)
        await self._server.apply_earlier(cid, actor)

    # -- posting -------------------------------------------------------------------

    def _elsewhere(self, cid: str) -> tuple[str | None, str | None] | None:
        """(node, owner key) of a conversation recently found served elsewhere, if fresh.

        A burst of sends to a conversation served by another node then costs one
        insert each, not a lease attempt and a load. Should that node have let
        the conversation go since, the row waits for the sweeper (at most
        ``renew_every``); the owner key is checked again when the row is applied.
        """
        known = self._recent.get(cid)
        if known is None:
            return None
        node_id, owner, until = known
        if monotonic() >= until or self._registry.holds(cid):
            del self._recent[cid]
            return None
        return node_id, owner

    def _remember(self, cid: str, node_id: str | None, owner: str | None) -> None:
        if len(self._recent) >= _RECENT_LIMIT:
            self._recent.clear()
        self._recent[cid] = (node_id, owner, monotonic() + self._recent_for)

    async def _stored_for(self, cid: str, scope: Any) -> _Header | None:
        """The stored conversation's owner key (checked against ``scope``) and its
        pending interrupt, or None when nothing is stored. Read from the header row
        alone when the store can (``PostgresStore.load_header``): a command for a
        conversation served elsewhere never loads its history here."""
        if self._header is None:
            stored = await self._starter.load(cid)
            found = None if stored is None else _Header(stored.owner, stored_interrupt(stored, cid))
        else:
            try:
                found = await self._header(cid)
            except CorruptStateError:
                raise
            except Exception as exc:
                raise unavailable(f"conversation {cid!r}", exc) from exc
        if found is not None:
            check_owner(self._owner_of, found.owner, scope=scope, conversation_id=cid)
        return found

    async def _send_waiting(self, cid: str, message_id: str) -> bool:
        """Whether a send of that message id waits in the conversation's inbox."""
        try:
            commands = await self._inbox.take(cid)
        except Exception as exc:
            raise unavailable(f"conversation {cid!r}", exc) from exc
        return any(c.kind == "send" and c.command_id == message_id for c in commands)

    async def _owner_node(self, cid: str) -> str | None:
        try:
            owner = await self._leases.table.owner(cid)
        except Exception as exc:
            raise unavailable(f"conversation {cid!r}", exc) from exc
        return None if owner is None else owner.node_id

    async def _post(
        self,
        cid: str,
        kind: CommandKind,
        payload: dict[str, Any],
        scope: Any,
        node_id: str | None,
        *,
        command_id: str | None = None,
    ) -> bool:
        """Store the command for the owner; True when it was new. Wakes the owner."""
        payload["owner"] = self._owner_of(scope)
        try:
            posted = await self._inbox.post(cid, kind, payload, command_id=command_id)
        except TypeError:
            raise
        except Exception as exc:
            raise unavailable(f"conversation {cid!r}", exc) from exc
        self.posted += posted.created
        if node_id is not None and cid not in self._waking and len(self._waking) < _MAX_WAKES:
            # One wake per conversation at a time: a post while one is in flight is
            # covered by its own NOTIFY (sent at commit) and the owner's next round.
            self._waking.add(cid)
            self._spawn(self._wake_owner, node_id, cid)
        return posted.created

    async def _wake_owner(self, node_id: str, cid: str) -> None:
        # A hint, never the command: the inbox's NOTIFY and the sweeper stand behind it.
        try:
            heard = 0
            with anyio.move_on_after(2.0):
                try:
                    heard = await self._wakeups.notify(node_id, cid)
                except Exception as exc:
                    _log.debug("cluster_wakeup_not_sent", conversation_id=cid, error=repr(exc))
            if not heard:
                # Nobody listens for that node (it stopped, or Redis is down): if it
                # gave the conversation up, take it here rather than wait for the sweeper.
                await self._server.serve(cid, take=True)
        finally:
            self._waking.discard(cid)


@attrs.frozen
class _Header:
    owner: str | None
    interrupt: PendingInterrupt | None


def _unanswered(found: _Header | None) -> PendingInterrupt | None:
    """The interrupt still waiting for an answer (not one whose answer is being
    carried out: a second answer to it is too late)."""
    interrupt = None if found is None else found.interrupt
    return None if interrupt is None or interrupt.answered else interrupt
