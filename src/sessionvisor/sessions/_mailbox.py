"""The local mailbox: how a command reaches the session that owns a conversation.

In one process the owner is the live actor in the registry; a command for a
conversation with no live actor wakes it first (through the registry's single
flight and the start pipeline), then is delivered. Ownership (the trusted
scope) is checked before anything is created or changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import InvalidStatus, NotRunning, SessionFailedError
from ..state import load_state
from ._actor import Actor
from ._boot import NO_RESUME, Starter, check_owner
from ._events import Status
from ._handle import Delivery
from ._seams import Registry

__all__: list[str] = ["LocalMailbox"]


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

    def _check_owner(self, owner: str | None, scope: Any, cid: str) -> None:
        check_owner(self._owner_of, owner, scope, cid)

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
        """Return the live actor of ``cid``, starting it (once) if needed.

        ``trusted`` skips the ownership check: the runtime's own wake (recovery).
        """
        self._check_open(cid)
        resume_error: list[Exception | None] = [None]

        async def start() -> Actor:
            actor, resume_error[0] = await self._starter.build(
                cid,
                scope,
                request_opts,
                reroute,
                pending_resume,
                self._registry.holds,
                check_access=not trusted,
            )
            return actor

        actor, started = await self._registry.ensure(cid, start)
        if not started and not trusted:
            self._check_owner(actor.owner, scope, cid)
        return actor, started, resume_error[0]

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
        for attempt in range(3):
            actor, started, _ = await self.ensure(conversation_id, scope, request_opts, reroute)
            try:
                queued, duplicate = await actor.send(content, scope, message_id=message_id)
            except (NotRunning, SessionFailedError):
                # It stopped (or gave up) between lookup and delivery: wake it again
                # from the store.
                if attempt == 2:
                    raise
                continue
            return Delivery(queued=queued, started=started, duplicate=duplicate)
        raise AssertionError("unreachable")

    async def resume(
        self, conversation_id: str, answer: Any, *, scope: Any, request_opts: dict[str, Any]
    ) -> Status:
        cid = conversation_id
        self._check_open(cid)
        actor = self._registry.live(cid)
        if actor is not None:
            self._check_owner(actor.owner, scope, cid)
            try:
                return await actor.resume(answer, scope)
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
        actor, started, resume_error = await self.ensure(cid, scope, request_opts, False, answer)
        if resume_error is not None:
            raise resume_error
        if not started:
            # Someone else woke it between our live attempt and the wake.
            return await actor.resume(answer, scope)
        return actor.status

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
            interrupt = load_state(stored.state, cid).interrupt
            if interrupt is None or interrupt.kind != "notice":
                raise InvalidStatus(
                    f"cannot dismiss conversation {cid!r}: it has no 'notice' interrupt",
                    Status.NOT_RUNNING.value,
                )
        actor, _, _ = await self.ensure(cid, scope, request_opts, False)
        return await actor.dismiss(scope)

    async def cancel(self, conversation_id: str, *, scope: Any) -> Status:
        cid = conversation_id
        self._check_open(cid)
        actor = self._registry.live(cid)
        if actor is None:
            raise InvalidStatus(
                f"cannot cancel conversation {cid!r}: status is not_running",
                Status.NOT_RUNNING.value,
            )
        self._check_owner(actor.owner, scope, cid)
        return await actor.cancel()

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
