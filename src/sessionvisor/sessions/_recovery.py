"""Recovery after a crash of the process.

A process that died mid-turn, or with messages still queued, leaves unanswered
work in the store: the last save's lifecycle is ``turn_start`` or ``queued``,
or ``State.queued`` is not empty. A supervisor that starts asks the store for
those conversations (through the store's index, see ``StateStore.unanswered``)
and wakes each one, so the pending messages are answered without a new request.
A turn is at-least-once: the agent sees an interrupted turn's user messages
again.

Recovered conversations wake with no scope (the scope is never stored), so
their router and agent see ``scope=None`` for that wake.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from ..state import StoredConversation, is_unanswered

if TYPE_CHECKING:
    from ._seams import Mailbox, Registry

__all__: list[str] = ["has_unanswered_work", "recover_unanswered", "wake_for_recovery"]

_log = structlog.get_logger("sessionvisor")
_AT_ONCE = 16  # conversations woken concurrently


def has_unanswered_work(stored: StoredConversation) -> bool:
    """True when a start would do something: the store's rule (``is_unanswered``)."""
    return is_unanswered(stored.lifecycle or "", stored.state)


async def recover_unanswered(store: Any, wake: Callable[[str], Awaitable[bool]]) -> None:
    """Wake every conversation the store lists as having unanswered work.

    A store without ``unanswered`` is skipped (logged once). ``wake`` returns
    whether it woke the conversation and never raises: a conversation that fails
    to wake is logged by it and left for its next request.
    """
    finder = getattr(store, "unanswered", None)
    if finder is None:
        _log.info(
            "supervisor_recovery_skipped", reason=f"{type(store).__name__} has no unanswered()"
        )
        return
    try:
        found: list[str] = list(await finder())
    except Exception as exc:
        _log.error("supervisor_recovery_failed", error=f"{type(exc).__name__}: {exc}")
        return
    if not found:
        return
    _log.info("supervisor_recovery_started", conversations=len(found))
    pending = iter(found)
    woken = 0

    async def waker() -> None:
        nonlocal woken
        for cid in pending:
            # ``wake`` logs its own failures: one bad conversation must not stop the others.
            if await wake(cid):
                woken += 1

    async with anyio.create_task_group() as tg:
        for _ in range(min(_AT_ONCE, len(found))):
            tg.start_soon(waker)
    _log.info("supervisor_recovery_finished", conversations=len(found), woken=woken)


async def wake_for_recovery(
    conversation_id: str,
    *,
    is_open: Callable[[], bool],
    registry: Registry,
    load: Callable[[str], Awaitable[StoredConversation | None]],
    mailbox: Mailbox,
    agent_id: str,
) -> bool:
    """Wake one conversation found with unanswered work; False when it was
    already live, had nothing left to answer, or failed to wake (logged)."""
    cid = conversation_id
    try:
        if not is_open() or registry.entry(cid) is not None:
            return False
        stored = await load(cid)
        # Checked again now: since the store was asked, a user may have woken and
        # stopped it, and nothing may be left to answer.
        if stored is None or not has_unanswered_work(stored):
            return False
        reached = await mailbox.ensure(cid, scope=None, trusted=True)
        return reached.started
    except Exception as exc:
        _log.warning(
            "recovery_wake_failed",
            conversation_id=cid,
            agent_id=agent_id,
            error=f"{type(exc).__name__}: {exc}",
        )
        return False
