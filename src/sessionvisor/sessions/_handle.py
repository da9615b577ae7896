"""``SessionHandle``: a live session, for code that already passed the scope check."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from .._json import check_json
from ..state import Content, State
from ._events import Status
from ._validation import check_content

if TYPE_CHECKING:
    from ._actor import Actor

__all__ = ["Delivery", "SessionHandle", "SessionInfo", "SessionSummary"]


@attrs.frozen
class Delivery:
    """What ``send`` did: ``queued`` behind a running turn; ``started`` the session;
    ``duplicate``: the client message id was already accepted, nothing was applied again."""

    queued: bool
    started: bool
    duplicate: bool = False


@attrs.frozen
class SessionSummary:
    """One running session, as ``list_running`` reports it (``queued``: messages waiting)."""

    conversation_id: str
    agent_id: str
    status: Status
    restarts: int
    last_activity_at: Any
    owner: str | None = None
    queued: int = 0


@attrs.frozen(eq=False)
class SessionInfo:
    """What ``start`` returns. ``started`` is False when the session was already live.

    ``handle`` is None when the session runs on another node (cluster mode).
    """

    agent_id: str
    conversation_id: str
    started: bool
    handle: SessionHandle | None


class SessionHandle:
    """One live session. It checks no scope: get it through an authorized call.

    Once the session stopped, its calls raise ``NotRunning``; once it gave up after
    crashing, ``SessionFailedError``. The supervisor's calls, unlike a handle, wake
    the conversation again.
    """

    __slots__ = ("_actor",)

    def __init__(self, actor: Actor) -> None:
        self._actor = actor

    def __repr__(self) -> str:
        return f"<SessionHandle {self.conversation_id!r} {self.status.value}>"

    @property
    def conversation_id(self) -> str:
        return self._actor.conversation_id

    @property
    def agent_id(self) -> str:
        return self._actor.agent_id

    @property
    def status(self) -> Status:
        """The current status (``not_running`` once stopped)."""
        actor = self._actor
        return Status.NOT_RUNNING if actor.closed else actor.status

    async def send(self, content: Content) -> Delivery:
        """Send a user message; see ``SessionSupervisor.send``.

        Raises:
            NotRunning, SessionFailedError, QueueFull, MessageRejected, ValueError.
        """
        check_content(
            content,
            max_bytes=self._actor.opts.max_message_bytes,
            conversation_id=self.conversation_id,
        )
        accepted = await self._actor.send(content, None)
        return Delivery(queued=accepted.queued, started=False, duplicate=accepted.duplicate)

    async def resume(self, answer: Any) -> Status:
        """Answer the pending interrupt.

        Raises:
            InvalidStatus: no interrupt is pending.
            TypeError, ValueError: the answer is not storable JSON.
        """
        check_json(answer, "answer", conversation_id=self.conversation_id)
        return await self._actor.resume(answer, None)

    async def dismiss(self) -> Status:
        """Clear a ``notice`` interrupt. Raises ``InvalidStatus`` otherwise."""
        return await self._actor.dismiss(None)

    async def cancel(self) -> Status:
        """Cancel the running turn. Raises ``InvalidStatus`` when none runs."""
        return await self._actor.cancel()

    async def stop(self) -> str:
        """Persist and stop the session; returns ``"stopped"``."""
        self._actor.check_open()
        await self._actor.stop()
        return "stopped"

    def snapshot(self) -> State:
        """Return a deep copy of the session's State."""
        return self._actor.state.model_copy(deep=True)

    def info(self) -> SessionSummary:
        """Return a summary of the session."""
        actor = self._actor
        return SessionSummary(
            conversation_id=actor.conversation_id,
            agent_id=actor.agent_id,
            status=self.status,
            restarts=actor.restarts,
            last_activity_at=actor.last_activity_at(),
            owner=actor.owner,
            queued=actor.folded.queued_count(),
        )

    def touch(self) -> None:
        """Count as activity (postpones the inactivity timeout)."""
        self._actor.touch()
