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
a cancel or stop row applied again cancels or stops again.

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
import structlog

from .._errors import InvalidStatus, NotRunning, QueueFull, SessionFailedError
from ..sessions._actor import Actor
from ..sessions._boot import NO_RESUME, Starter, check_owner
from ..sessions._events import Status
from ..sessions._handle import Delivery
from ..sessions._mailbox import LocalMailbox
from ..sessions._recovery import has_unanswered_work
from ..sessions._registry import LocalRegistry
from ..sessions._seams import RunningElsewhere
from ..sessions._stats import RuntimeStats
from ..state import load_state
from ._inbox import Command, CommandKind, Inbox
from ._ownership import Leases, OwnedElsewhere, unavailable
from ._pg import monotonic
from ._wakeups import Wakeups

__all__: list[str] = ["ClusterMailbox", "ClusterRegistry"]

_log = structlog.get_logger("sessionvisor")
_RECENT_LIMIT = 10_000  # conversations remembered as served elsewhere


_FIRST_WAKE_DELAY = 2.0
_MAX_WAKE_DELAY = 120.0


class ClusterRegistry(LocalRegistry):
    """The local registry, starting a session only under this node's lease."""

    def __init__(self, leases: Leases) -> None:
        super().__init__()
        self._leases = leases
        self.spawn: Callable[[Any], None] | None = None

    async def ensure(
        self, conversation_id: str, start: Callable[[], Awaitable[Actor]]
    ) -> tuple[Actor, bool]:
        async def leased_start() -> Actor:
            await self._leases.take(conversation_id)
            try:
                return await start()
            except BaseException:
                self._release(conversation_id)
                raise

        return await super().ensure(conversation_id, leased_start)

    def forget(self, actor: Actor) -> None:
        cid = actor.conversation_id
        if self.entry(cid) is actor:
            super().forget(actor)
            self._release(cid)

    def in_use(self, conversation_id: str) -> bool:
        """True while an actor is registered for the conversation or starting."""
        return self.entry(conversation_id) is not None or conversation_id in self._flights

    def _release(self, conversation_id: str) -> None:
        if self.spawn is not None:
            self._leases.release_soon(conversation_id, self.spawn)


class ClusterMailbox:
    """Implements ``Mailbox`` across nodes (see the module docstring)."""

    def __init__(
        self,
        local: LocalMailbox,
        *,
        registry: ClusterRegistry,
        starter: Starter,
        leases: Leases,
        inbox: Inbox,
        wakeups: Wakeups,
        owner_of: Callable[[Any], str | None],
        check_open: Callable[[str], None],
        spawn: Callable[..., None],
        recent_for: float,
        stats: RuntimeStats,
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
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}
        self._probe = _Probe(inbox)
        self._recent: dict[str, tuple[str | None, str | None, float]] = {}
        # Conversations whose wake for the cluster failed: cid -> (next delay, not
        # before), on the event loop's clock. The sweeper leaves them alone until
        # then, so a conversation that cannot start is not claimed and failed on
        # every sweep for ever.
        self._wake_backoff: dict[str, tuple[float, float]] = {}
        self._stats = stats
        self._recent_for = recent_for
        self.posted = 0  # commands stored for another node
        self.applied = 0  # inbox commands applied here
        # Conversations being served now -> None, or whether another round was asked
        # for (True: with ``take``).
        self._serving: dict[str, bool | None] = {}

    # -- the calls -----------------------------------------------------------------

    async def ensure(
        self,
        cid: str,
        scope: Any,
        request_opts: dict[str, Any],
        reroute: bool,
        pending_resume: Any = NO_RESUME,
        *,
        trusted: bool = False,
    ) -> tuple[Actor, bool, Exception | None]:
        try:
            return await self._local.ensure(
                cid, scope, request_opts, reroute, pending_resume, trusted=trusted
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
        for attempt in range(3):
            elsewhere = self._elsewhere(cid)
            try:
                if elsewhere is not None:
                    check_owner(self._owner_of, elsewhere[1], scope, cid)
                    raise OwnedElsewhere(cid, elsewhere[0])
                actor, started, _ = await self._local.ensure(cid, scope, request_opts, reroute)
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
            try:
                # Commands stored for this conversation before this one go first. The
                # check is one query shared by the sends in flight (``_Probe``); the
                # lock is taken only when there is something to apply.
                if await self._probe.pending(cid):
                    async with self._lock(cid):
                        await self._apply_inbox(cid, actor)
                queued, duplicate = await actor.send(content, scope, message_id=message_id)
            except (NotRunning, SessionFailedError):
                if attempt == 2:
                    raise
                continue
            return Delivery(queued=queued, started=started, duplicate=duplicate)
        raise AssertionError("unreachable")

    async def resume(
        self, conversation_id: str, answer: Any, *, scope: Any, request_opts: dict[str, Any]
    ) -> Status:
        cid = conversation_id
        try:
            return await self._local.resume(cid, answer, scope=scope, request_opts=request_opts)
        except OwnedElsewhere as exc:
            stored = await self._stored_for(cid, scope)
            interrupt = None if stored is None else load_state(stored.state, cid).interrupt
            if interrupt is None:
                raise InvalidStatus(
                    f"cannot resume conversation {cid!r}: it holds no interrupt",
                    Status.RUNNING.value,
                ) from None
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
            return await self._local.dismiss(cid, scope=scope, request_opts=request_opts)
        except OwnedElsewhere as exc:
            stored = await self._stored_for(cid, scope)
            interrupt = None if stored is None else load_state(stored.state, cid).interrupt
            if interrupt is None or interrupt.kind != "notice":
                raise InvalidStatus(
                    f"cannot dismiss conversation {cid!r}: it has no 'notice' interrupt",
                    Status.RUNNING.value,
                ) from None
            payload = {"interrupt": interrupt.model_dump(mode="json")}
            await self._post(cid, "dismiss", payload, scope, exc.node_id)
            return Status.IDLE

    async def cancel(self, conversation_id: str, *, scope: Any) -> Status:
        cid = conversation_id
        self._check_open(cid)
        if self._registry.live(cid) is not None:
            return await self._local.cancel(cid, scope=scope)
        owner = await self._owner_node(cid)
        if owner is None:
            raise InvalidStatus(
                f"cannot cancel conversation {cid!r}: status is not_running",
                Status.NOT_RUNNING.value,
            )
        await self._stored_for(cid, scope)
        await self._post(cid, "cancel", {}, scope, owner)
        return Status.CANCELLED

    async def stop(self, conversation_id: str, *, scope: Any) -> str:
        cid = conversation_id
        self._check_open(cid)
        if self._registry.entry(cid) is not None:
            return await self._local.stop(cid, scope=scope)
        owner = await self._owner_node(cid)
        if owner is None:
            return "not_running"
        await self._stored_for(cid, scope)
        await self._post(cid, "stop", {}, scope, owner)
        return "stopped"

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

    async def _stored_for(self, cid: str, scope: Any) -> Any:
        stored = await self._starter.load(cid)
        if stored is not None:
            check_owner(self._owner_of, stored.owner, scope, cid)
        return stored

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
        if node_id is not None:
            self._spawn(self._wake_owner, node_id, cid)
        return posted.created

    async def _wake_owner(self, node_id: str, cid: str) -> None:
        # A hint, never the command: the inbox's NOTIFY and the sweeper stand behind it.
        heard = 0
        with anyio.move_on_after(2.0):
            try:
                heard = await self._wakeups.notify(node_id, cid)
            except Exception as exc:
                _log.debug("cluster_wakeup_not_sent", conversation_id=cid, error=repr(exc))
        if not heard:
            # Nobody listens for that node (it stopped, or Redis is down): if it gave
            # the conversation up, take it here rather than wait for the sweeper.
            await self.serve(cid, take=True)

    # -- the owner's side ----------------------------------------------------------

    async def serve(self, cid: str, *, take: bool) -> None:
        """Apply the conversation's inbox here when this node serves it (or, with
        ``take``, when it can take it: nobody else serves it).

        Called on a wake-up, for a lease the sweeper claimed, and after posting.
        Calls for a conversation already being served fold into one more round
        of the running call (a post wakes its owner twice: Redis and NOTIFY).
        """
        if cid in self._serving:
            asked = self._serving[cid]
            self._serving[cid] = take if asked is None else (asked or take)
            return
        self._serving[cid] = None
        try:
            while True:
                await self._serve_once(cid, take=take)
                again = self._serving[cid]
                if again is None:
                    break
                take = again
                self._serving[cid] = None
        finally:
            del self._serving[cid]

    async def _serve_once(self, cid: str, *, take: bool) -> None:
        try:
            actor = self._registry.live(cid)
            if actor is None:
                if not take:
                    return
                actor = await self._wake(cid)
                if actor is None:
                    return
            async with self._lock(cid):
                await self._apply_inbox(cid, actor)
        except (OwnedElsewhere, RunningElsewhere):
            return
        except Exception as exc:
            if take and self._registry.live(cid) is None:
                self._wake_failed(cid, exc)
            else:
                _log.warning("cluster_serve_failed", conversation_id=cid, error=repr(exc))
        else:
            self._wake_backoff.pop(cid, None)
        finally:
            if take:
                # Nothing serves it here (the wake failed, or there was nothing to
                # do): a lease kept now would be renewed for ever with no session
                # behind it, and the conversation would be unreachable.
                self._leases_done(cid)

    def wake_put_off(self, cid: str) -> bool:
        """True while a conversation whose wake failed waits out its backoff."""
        entry = self._wake_backoff.get(cid)
        return entry is not None and anyio.current_time() < entry[1]

    def _wake_failed(self, cid: str, exc: Exception) -> None:
        self._stats.background_failures["wake"] += 1
        known = self._wake_backoff.get(cid)
        delay = _FIRST_WAKE_DELAY if known is None else known[0]
        self._wake_backoff[cid] = (min(delay * 2, _MAX_WAKE_DELAY), anyio.current_time() + delay)
        # Logged once per conversation until it wakes; counted every time.
        log = _log.warning if known is None else _log.debug
        log("cluster_wake_failed", conversation_id=cid, error=repr(exc)[:500], retry_in=delay)

    async def _wake(self, cid: str) -> Actor | None:
        """Start the conversation here for its inbox or its unanswered work; None
        (and the lease let go) when it has neither."""
        stored = await self._starter.load(cid)
        first = await self._inbox.take(cid, limit=1)
        if not first and (stored is None or not has_unanswered_work(stored)):
            self._leases_done(cid)
            return None
        if stored is None:
            # Posted for a conversation its owner never saved (started, then died):
            # it is created for the poster's owner key.
            scope = first[0].payload.get("owner") if isinstance(first[0].payload, dict) else None
            actor, _, _ = await self._local.ensure(cid, scope, {}, False)
        else:
            actor, _, _ = await self._local.ensure(cid, None, {}, False, trusted=True)
        return actor

    def _leases_done(self, cid: str) -> None:
        if not self._registry.in_use(cid) and self._registry.spawn is not None:
            self._leases.release_soon(cid, self._registry.spawn)

    async def _apply_inbox(self, cid: str, actor: Actor) -> None:
        """Apply the conversation's pending commands in order, then delete them."""
        try:
            commands = await self._inbox.take(cid)
        except Exception as exc:
            raise unavailable(f"conversation {cid!r}", exc) from exc
        applied: list[int] = []
        try:
            for command in commands:
                if actor.closed:
                    break
                owner = command.payload.get("owner") if isinstance(command.payload, dict) else None
                if actor.owner is not None and owner != actor.owner:
                    _log.warning(
                        "cluster_command_refused", conversation_id=cid, reason="owner mismatch"
                    )
                    applied.append(command.seq)
                    continue
                try:
                    await self._apply(actor, command)
                except QueueFull:
                    break  # it stays in the inbox until the queue has room
                except (NotRunning, SessionFailedError):
                    break
                except (InvalidStatus, ValueError, TypeError) as exc:
                    _log.info(
                        "cluster_command_refused",
                        conversation_id=cid,
                        kind=command.kind,
                        command_id=command.command_id,
                        reason=str(exc),
                    )
                applied.append(command.seq)
        finally:
            if applied:
                self.applied += len(applied)
                with anyio.CancelScope(shield=True):
                    await self._inbox.done(applied)

    async def _apply(self, actor: Actor, command: Command) -> None:
        payload = command.payload if isinstance(command.payload, dict) else {}
        kind = command.kind
        if kind == "send":
            content: Any = payload.get("content")
            await actor.send(content, None, message_id=command.command_id)
        elif kind == "resume":
            _check_same_interrupt(actor, payload, command)
            await actor.resume(payload.get("answer"), None)
        elif kind == "dismiss":
            _check_same_interrupt(actor, payload, command)
            await actor.dismiss(None)
        elif kind == "cancel":
            if actor.status is Status.RUNNING:
                await actor.cancel()
        else:
            await actor.stop()

    def _lock(self, cid: str) -> _Turnstile:
        return _Turnstile(self._locks, cid)


def _check_same_interrupt(actor: Actor, payload: dict[str, Any], command: Command) -> None:
    """Refuse an answer meant for another question than the one pending now."""
    pending = actor.state.interrupt
    meant = payload.get("interrupt")
    if meant is not None and (pending is None or pending.model_dump(mode="json") != meant):
        raise InvalidStatus(
            f"conversation {command.conversation_id!r}: the {command.kind} command "
            f"{command.command_id!r} answered an interrupt that is no longer pending",
            actor.status.value,
        )


class _Batch:
    __slots__ = ("done", "error", "found", "ids")

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.found: set[str] = set()
        self.error: Exception | None = None
        self.done = anyio.Event()


class _Probe:
    """Answers "has this conversation pending inbox rows?" for many callers with
    one query: callers that arrive while a query runs share the next one.

    A caller's answer comes from a query that began after it asked, so a row
    committed before the call is seen.
    """

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox
        self._open: _Batch | None = None
        self._busy = False

    async def pending(self, cid: str) -> bool:
        batch = self._open
        if batch is None:
            batch = self._open = _Batch()
        batch.ids.add(cid)
        if self._busy:
            await batch.done.wait()
        else:
            with anyio.CancelScope(shield=True):  # the others wait on this caller's query
                await self._lead()
        if batch.error is not None:
            raise unavailable(f"conversation {cid!r}", batch.error) from batch.error
        return cid in batch.found

    async def _lead(self) -> None:
        self._busy = True
        try:
            while self._open is not None:
                batch, self._open = self._open, None
                try:
                    batch.found = await self._inbox.pending_among(batch.ids)
                except Exception as exc:
                    batch.error = exc
                batch.done.set()
        finally:
            self._busy = False


class _Turnstile:
    """One lock per conversation, kept only while someone holds or waits for it."""

    def __init__(self, locks: dict[str, tuple[anyio.Lock, int]], cid: str) -> None:
        self._locks = locks
        self._cid = cid

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._cid, (None, 0))
        if lock is None:
            lock = anyio.Lock()
        self._locks[self._cid] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._leave(lock)
            raise

    async def __aexit__(self, *exc: object) -> None:
        lock = self._locks[self._cid][0]
        lock.release()
        self._leave(lock)

    def _leave(self, lock: anyio.Lock) -> None:
        _, users = self._locks[self._cid]
        if users <= 1:
            del self._locks[self._cid]
        else:
            self._locks[self._cid] = (lock, users - 1)
