"""What a conversation's durable steps left behind: its usage totals and its steps.

``SessionSupervisor`` inherits these calls; they read the State ``load`` returns
(the live copy, else the stored one), so they follow its scope rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..state import StepRecord, Usage
from ._steps import audit_view

if TYPE_CHECKING:
    from ..state import State

__all__: list[str] = ["Records"]


class Records:
    """The read-only calls over a conversation's steps (mixed into the supervisor)."""

    async def load(self, conversation_id: str, *, scope: Any = None) -> State | None:
        raise NotImplementedError  # the supervisor's

    async def usage(self, conversation_id: str, *, scope: Any = None) -> Usage | None:
        """The conversation's model usage totals, each stored model response counted
        once (a rerun that replays a step does not count it again).

        Returns:
            The totals, or None when the conversation does not exist.

        Raises:
            AccessDenied, CorruptStateError, RegistryUnavailable.
        """
        state = await self.load(conversation_id, scope=scope)
        return None if state is None else state.usage.model_copy()

    async def steps(self, conversation_id: str, *, scope: Any = None) -> list[StepRecord] | None:
        """The stored steps of the conversation's turns, oldest first: those of the
        turns that ended (the most recent 1,000 or so), then the running or cut turn's.

        A step of an ended turn that started and never stored a result reads
        ``status="unknown"``; a result over 4 KiB as JSON is left out
        (``omitted=True``).

        Returns:
            The steps, or None when the conversation does not exist.

        Raises:
            AccessDenied, CorruptStateError, RegistryUnavailable.
        """
        state = await self.load(conversation_id, scope=scope)
        return None if state is None else audit_view(state)
