"""Regenerate, edit, and a cancel that keeps what was said.

A regenerate answers a user message again; an edit changes a user message and
answers it again. Both run on the actor like a send: nothing may run, the
messages from that user message on are *superseded* (they stay in the stored
history and leave what people and the agent see, see ``_superseding``), and a
new user message - a copy with ``metadata["regenerates"]`` or the new text with
``metadata["edits"]``, naming the message it replaces, with an id of its own -
starts a new turn. Being a new message, it gets a new turn (and journal) of its
own, never a rerun of the old one.

``SessionSupervisor`` inherits ``Rewrites``'s calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import InvalidStatus, MessageTooLarge
from .._options import SupervisorOpts
from ..state import load_state
from ._events import Status
from ._intake import check_not_superseded, check_saved, new_message, preprocess
from ._recovery import has_unanswered_work
from ._superseding import REPLACES, find_user_message
from ._validation import check_content, check_conversation_id, check_message_id, content_size_ok

if TYPE_CHECKING:
    from ..state import StoredConversation
    from ._actor import Actor
    from ._seams import Mailbox, Registry

__all__: list[str] = ["Rewrites", "check_stored_rewrite", "rewrite_turn"]


async def rewrite_turn(
    actor: Actor,
    message_id: str | None,
    content: Any,
    scope: Any,
    *,
    edit: bool,
    asked_id: str | None = None,
    wait: bool = False,
) -> str:
    """Supersede the answer to a user message (for ``edit``, the message too) and run
    a new turn for it; return the id of the user message asked again.

    Returns once that message and the superseding are stored. ``asked_id`` is the
    id the new message gets (made by the node that took the call, in a cluster): a
    conversation that already holds a message with that id took this command before,
    and nothing changes. With ``wait``, a running turn (and the queue behind it) is
    waited for instead of refused: a command stored in order behind the message
    that started it.

    Raises:
        InvalidStatus: a turn runs, the message is not a user message, or it waits
            in the queue.
        UnknownMessage: no visible message has that id.
        MessageTooLarge, MessageRejected: the edit's content was refused.
        StoreUnavailable: it could not be stored (retry it).
    """
    call = "edit" if edit else "regenerate"
    cid = actor.conversation_id
    actor.check_open()
    if asked_id is not None and _holds(actor, asked_id):
        return asked_id  # applied before: a command taken again after a crash
    if wait:
        await _quiet(actor)
        actor.check_open()
    _check_quiet(actor, call)
    state = actor.state
    target = state.messages[_find(actor, message_id, call)]
    if edit:
        max_bytes = actor.opts.max_message_bytes
        if not content_size_ok(content, max_bytes):
            raise MessageTooLarge(
                f"content of the edit of message {target.id!r} of conversation {cid!r} is "
                f"larger than max_message_bytes={max_bytes} as JSON"
            )
        asked = new_message("user", content)
        pre = actor.opts.message_preprocessor
        if pre is not None:
            asked = await preprocess(
                pre, asked, scope=scope, conversation_id=cid, agent_id=actor.agent_id, state=state
            )
            # The session may have moved on while the preprocessor ran.
            actor.check_open()
            _check_quiet(actor, call)
            state = actor.state
            target = state.messages[_find(actor, target.id, call)]
        base, key = asked.metadata, "edits"
    else:
        asked, base, key = target, target.metadata, "regenerates"
    metadata = {k: v for k, v in base.items() if k not in REPLACES}
    metadata[key] = target.id
    again = new_message("user", asked.content, metadata=metadata, message_id=asked_id)
    hidden = set(state.superseded)
    start = state.messages.index(target)
    superseded = [m.id for m in state.messages[start:] if m.id not in hidden]
    actor.begin_rewrite(superseded, again, scope)
    saved = await actor.persist("turn_start")
    # No await between the save and the hand-over: a cancelled caller still hands over.
    actor.hand_over_begun_turn()
    check_not_superseded(actor)
    check_saved(actor, saved, what=f"the {call}")
    actor.log().info(f"message_{call}", message_id=target.id, asked=again.id)
    return again.id


def check_stored_rewrite(
    stored: StoredConversation | None, message_id: str | None, *, conversation_id: str, edit: bool
) -> None:
    """Refuse, from the stored conversation, a regenerate or an edit that its session
    would refuse: what a node that does not serve the conversation can tell before it
    stores the command for the node that does. The owner checks again when it applies
    it (the stored state may be a moment behind).

    Raises:
        InvalidStatus: nothing is stored, a turn runs (or messages wait to run), or the
            message is not a user message (or waits in the queue, or there is none).
        UnknownMessage: the stored history shows no message with that id.
    """
    call = "edit" if edit else "regenerate"
    cid = conversation_id
    if stored is None:
        raise InvalidStatus(
            f"cannot {call} conversation {cid!r}: nothing is stored", Status.NOT_RUNNING.value
        )
    if has_unanswered_work(stored):
        raise InvalidStatus(
            f"cannot {call} conversation {cid!r}: a turn is running "
            "(wait for it to end, or cancel it)",
            Status.RUNNING.value,
        )
    state = load_state(stored.state, cid)
    status = Status.INTERRUPTED if state.interrupt is not None else Status.IDLE
    find_user_message(state, message_id, conversation_id=cid, call=call, status=status.value)


def _find(actor: Actor, message_id: str | None, call: str) -> int:
    return find_user_message(
        actor.state,
        message_id,
        conversation_id=actor.conversation_id,
        call=call,
        status=actor.status.value,
    )


def _busy(actor: Actor) -> bool:
    return actor.busy or actor.turn.active or actor.status is Status.RUNNING


def _holds(actor: Actor, message_id: str) -> bool:
    state = actor.state
    return any(m.id == message_id for m in state.messages) or any(
        m.id == message_id for m in state.queued
    )


async def _quiet(actor: Actor) -> None:
    """Wait until no turn runs and no queued one waits to run (the worker is done)."""
    while not actor.closed and _busy(actor):
        # Woken at each turn's end and when the worker leaves or the session ends.
        await actor.turn.wait_done()


def _check_quiet(actor: Actor, call: str) -> None:
    if _busy(actor):
        raise InvalidStatus(
            f"cannot {call} conversation {actor.conversation_id!r}: a turn is running "
            "(wait for it to end, or cancel it)",
            Status.RUNNING.value,
        )


class Rewrites:
    """The calls that change what was said (mixed into ``SessionSupervisor``)."""

    _mailbox: Mailbox
    _registry: Registry
    _defaults: SupervisorOpts

    async def regenerate(
        self, conversation_id: str, *, message_id: str | None = None, scope: Any = None
    ) -> str:
        """Answer a user message again: its answer (and everything after it) is
        superseded and a new turn answers the message, asked again as a new message
        (``metadata["regenerates"]`` names the one it replaces). Wakes the session
        if needed; returns once this is stored, not when the answer is done.

        Args:
            message_id: the user message (default: the last one). The id of a message
                that was since regenerated or edited names the message that replaced it.

        Returns:
            The id of the user message asked again.

        Raises:
            InvalidStatus: a turn runs, the message is not a user message (or waits in
                the queue), the history has none, or nothing is stored
                (``not_running``).
            UnknownMessage: the conversation shows no message with that id.
            AccessDenied, StoreUnavailable, RegistryUnavailable, the errors of ``start``.
        """
        cid = check_conversation_id(conversation_id)
        mid = check_message_id(message_id, cid)
        return await self._mailbox.rewrite(
            cid, message_id=mid, content=None, edit=False, scope=scope
        )

    async def edit(
        self, conversation_id: str, message_id: str, content: Any, *, scope: Any = None
    ) -> str:
        """Change a user message and answer it again: the message and everything after
        it are superseded, and a new turn answers ``content``, asked as a new message
        (``metadata["edits"]`` names the one it replaces; the message preprocessor
        sees it as it sees a send). Returns once this is stored.

        Returns:
            The id of the new user message.

        Raises:
            the errors of ``regenerate``, and MessageTooLarge, MessageRejected,
            TypeError/ValueError for a bad id or content (as ``send``).
        """
        cid = check_conversation_id(conversation_id)
        mid = check_message_id(message_id, cid)
        if mid is None:
            raise TypeError(f"edit of conversation {cid!r}: message_id must be a str, got None")
        live = self._registry.live(cid)
        limit = (live.opts if live else self._defaults).max_message_bytes
        check_content(content, max_bytes=limit, conversation_id=cid)
        return await self._mailbox.rewrite(
            cid, message_id=mid, content=content, edit=True, scope=scope
        )

    async def cancel(
        self, conversation_id: str, *, scope: Any = None, keep_partial: bool = False
    ) -> Status:
        """Cancel the running turn (anyio cancellation) and wait until it ended.

        With ``keep_partial`` the text the turn streamed so far is stored as the
        assistant's message, with ``metadata["cancelled"] = True`` (nothing is added
        when it streamed nothing). Either way the cancel is stored before this
        returns, and the queue is held until the user writes again.

        Returns:
            The status afterwards (``cancelled``, unless the turn finished first).

        Raises:
            InvalidStatus: no turn runs (``not_running`` when nothing is live).
        """
        cid = check_conversation_id(conversation_id)
        if not isinstance(keep_partial, bool):
            raise TypeError(f"keep_partial must be a bool, got {type(keep_partial).__name__}")
        return await self._mailbox.cancel(cid, scope=scope, keep_partial=keep_partial)
