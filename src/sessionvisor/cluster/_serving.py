"""The owner's side of the inbox: applying the commands other nodes stored.

A node serves a conversation's inbox when it holds the conversation (a wake-up,
a NOTIFY, the slow poll), or takes it first (``take``: the sweeper claimed its
lease, or the poster found nobody listening). Rows are applied in order, one
conversation at a time (``_Turnstile``), and deleted once applied; a row
applied twice changes nothing the second time (a send carries its message id;
a resume or dismiss carries the interrupt it answers). A conversation that
cannot wake is tried again after a backoff, not on every sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import structlog

from .._errors import InvalidStatus, NotRunning, QueueFull, SessionFailedError, UnknownMessage
from ..sessions import Status
from ..sessions.spi import (
    Creation,
    LocalMailbox,
    Registry,
    RunningElsewhere,
    RuntimeStats,
    Session,
    Starter,
    has_unanswered_work,
)
from ._inbox import Command, Inbox
from ._ownership import OwnedElsewhere, unavailable

__all__: list[str] = ["InboxServer"]

_log = structlog.get_logger("sessionvisor")
# Commands that wait for a running turn to end before they apply.
_WAITING = frozenset({"regenerate", "edit"})


class InboxServer:
    """Applies a conversation's inbox on the node that serves it (see the module
    docstring)."""

    def __init__(
        self,
        local: LocalMailbox,
        *,
        registry: Registry,
        starter: Starter,
        inbox: Inbox,
        release: Callable[[str], None],
        stats: RuntimeStats,
    ) -> None:
        self._local = local
        self._registry = registry
        self._starter = starter
        self._inbox = inbox
        self._release = release
        self._stats = stats
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}
        self._probe = _Probe(inbox)
        # Conversations whose wake for the cluster failed here: cid -> failures since
        # its last wake that worked. The back-off itself is in the lease row (each
        # claim puts the next one off, see ``LeaseTable.claim_expired``), so every
        # node keeps to it; this counts and logs once.
        self._wake_backoff: dict[str, int] = {}
        self.applied = 0  # inbox commands applied here
        # Conversations being served now -> None, or whether another round was asked
        # for (True: with ``take``).
        self._serving: dict[str, bool | None] = {}

    async def apply_earlier(self, cid: str, actor: Session) -> None:
        """Apply the commands stored for the conversation before a send that
        reached its owner directly. The check is one query shared by the sends
        in flight (``_Probe``); the lock is taken only when there is something
        to apply."""
        if await self._probe.pending(cid):
            async with self._lock(cid):
                await self.apply_inbox(cid, actor)

    async def has_pending(self, cid: str) -> bool:
        """Whether the conversation has stored commands (one shared query, ``_Probe``)."""
        return await self._probe.pending(cid)

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
            actor: Session | None = self._registry.live(cid)
            if actor is None:
                if not take:
                    return
                actor = await self._wake(cid)
                if actor is None:
                    return
            async with self._lock(cid):
                await self.apply_inbox(cid, actor)
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

    def wake_failed(self, cid: str) -> bool:
        """True when the conversation's last wake here failed."""
        return cid in self._wake_backoff

    def _wake_failed(self, cid: str, exc: Exception) -> None:
        self._stats.background_failures["wake"] += 1
        failures = self._wake_backoff[cid] = self._wake_backoff.get(cid, 0) + 1
        # Logged once per conversation until it wakes; counted every time (/metrics).
        log = _log.warning if failures == 1 else _log.debug
        log("cluster_wake_failed", conversation_id=cid, error=repr(exc)[:500], failures=failures)

    async def _wake(self, cid: str) -> Session | None:
        """Start the conversation here for its inbox or its unanswered work; None
        (and the lease let go) when it has neither."""
        stored = await self._starter.load(cid)
        first = await self._inbox.take(cid, limit=1)
        if not first and (stored is None or not has_unanswered_work(stored)):
            self._leases_done(cid)
            return None
        if stored is None:
            # Posted for a conversation its owner never saved (started, then died): it
            # is created for the poster's owner key (woken with no scope, as always).
            payload = first[0].payload if isinstance(first[0].payload, dict) else {}
            owner = payload.get("owner")
            creation = Creation(owner if isinstance(owner, str) else None)
            reached = await self._local.ensure(cid, scope=None, trusted=True, create_for=creation)
            return reached.actor
        return (await self._local.ensure(cid, scope=None, trusted=True)).actor

    def _leases_done(self, cid: str) -> None:
        if not self._registry.in_use(cid):
            self._release(cid)

    async def apply_inbox(self, cid: str, actor: Session) -> None:
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
                if command.kind in _WAITING and applied:
                    # It may wait for a turn: the rows applied before it go now.
                    await self._done(applied)
                    applied = []
                try:
                    await self._apply(actor, command)
                except QueueFull:
                    break  # it stays in the inbox until the queue has room
                except (NotRunning, SessionFailedError):
                    break
                except (InvalidStatus, UnknownMessage, ValueError, TypeError) as exc:
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
                await self._done(applied)

    async def _done(self, applied: list[int]) -> None:
        self.applied += len(applied)
        with anyio.CancelScope(shield=True):
            await self._inbox.done(applied)

    async def _apply(self, actor: Session, command: Command) -> None:
        payload = command.payload if isinstance(command.payload, dict) else {}
        kind = command.kind
        if kind == "send":
            content: Any = payload.get("content")
            await actor.send(content, None, message_id=command.command_id)
        elif kind == "resume":
            _check_same_interrupt(actor, payload, command)  # by its whole form, id included
            await actor.resume(payload.get("answer"), None)
        elif kind == "dismiss":
            _check_same_interrupt(actor, payload, command)
            await actor.dismiss(None)
        elif kind == "cancel":
            if actor.status is Status.RUNNING:
                await actor.cancel(keep_partial=payload.get("keep_partial") is True)
        elif kind in _WAITING:
            # A turn started since the command was stored (by a command stored before
            # it, or a timer) is waited for, with the rows behind this one: the user
            # asked for it and was told it is stored. The new message takes the id
            # the caller was given (the command's id).
            target = payload.get("message_id")
            await actor.rewrite(
                target if isinstance(target, str) else None,
                payload.get("content"),
                None,
                edit=kind == "edit",
                asked_id=command.command_id,
                wait=True,
            )
        elif kind == "stop":
            await actor.stop()
        else:
            raise ValueError(f"unknown command kind {kind!r}")

    def _lock(self, cid: str) -> _Turnstile:
        return _Turnstile(self._locks, cid)


def _check_same_interrupt(actor: Session, payload: dict[str, Any], command: Command) -> None:
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
    committed before the call is seen. The first caller of a batch runs that
    batch's query, after at most the one query already running: nobody waits
    for more than two queries however many callers keep arriving.
    """

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox
        self._open: _Batch | None = None
        self._querying = anyio.Lock()

    async def pending(self, cid: str) -> bool:
        batch = self._open
        leads = batch is None
        if batch is None:
            batch = self._open = _Batch()
        batch.ids.add(cid)
        if leads:
            with anyio.CancelScope(shield=True):  # the others wait on this caller's query
                await self._run(batch)
        else:
            await batch.done.wait()
        if batch.error is not None:
            raise unavailable(f"conversation {cid!r}", batch.error) from batch.error
        return cid in batch.found

    async def _run(self, batch: _Batch) -> None:
        async with self._querying:
            if self._open is batch:
                self._open = None  # later callers start the next batch
            try:
                batch.found = await self._inbox.pending_among(batch.ids)
            except Exception as exc:
                batch.error = exc
            finally:
                batch.done.set()


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
