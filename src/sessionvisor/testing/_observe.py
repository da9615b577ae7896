from __future__ import annotations

from ..sessions import SessionSupervisor

__all__ = ["subscriber_backlogs"]


def subscriber_backlogs(supervisor: SessionSupervisor, conversation_id: str) -> list[int]:
    """How many events wait, not yet read, in each open subscription of a conversation.

    One number per subscription this process holds for the conversation (an
    event stream of the HTTP app is one), in the order they subscribed; an
    empty list when there is none (as ``supervisor.subscriber_count`` says).
    A subscriber that falls ``subscriber_buffer`` events behind is cut off, so
    no number exceeds that option: sampling this while clients read (or stall)
    shows what the supervisor holds for them.
    """
    topic = supervisor._bus.existing(conversation_id)
    if topic is None:
        return []
    return [sub.pending() for sub in topic.subscribers]
