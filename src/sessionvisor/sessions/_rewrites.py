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
from ._events import Status
from ._intake import check_not_superseded, check_saved, new_message, preprocess
from ._superseding import REPLACES, find_user_message
from ._validation import check_content, check_conversation_id, check_message_id, content_size_ok

if TYPE_CHECKING:
    from ._actor import Actor
    from ._seams import Mailbox, Registry

__all__: list[str] = ["Rewrites", "rewrite_turn"]


async def rewrite_turn(
    actor: Actor, message_id: str | None, content: Any, scope: Any, *, edit: bool
) -> str:
    """Supersede the answer to a user message (for ``edit``, the message too) and run
    a new turn for it; return the id of the user message asked again.

    Returns once that message and the superseding are stored.

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
    again = new_message("user", asked.content, metadata=metadata)
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


def _find(actor: Actor, message_id: str | None, call: str) -> int:
    return find_user_message(
        actor.state,
        message_id,
        conversation_id=actor.conversation_id,
        call=call,
        status=actor.status.value,
    )


def _check_quiet(actor: Actor, call: str) -> None:
    if actor.busy or actor.turn.active or actor.status is Status.RUNNING:
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
