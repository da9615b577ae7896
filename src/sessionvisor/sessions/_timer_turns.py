"""A timer's turn: the queued message that stands for a fired timer, and calling
the agent's ``on_timer`` hook for it.

A fired timer is queued as a user message whose metadata carries the timer
(``metadata["timer"]``: key, id, due, payload) and whose id is
``"timer-<id>"``: the id of that scheduling, so a second firing of it (a crash
between queueing the turn and removing the timer) is recognised as a message
the conversation already holds. A client cannot set a message's metadata, so
only the runtime makes timer turns. The queue hands such a message to a turn
of its own (``_intake.take``), in order with the messages around it.

The turn calls ``agent.on_timer(turn, payload)`` when the agent has that hook.
An agent without it gets a plain turn (``run``): the message is in the
history like any user message, its text the payload (a str as it is, any
other value as JSON), so an agent that ignores timers still answers it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from ..agents import Turn
from ..state import Message, StoredTimer

__all__: list[str] = [
    "TIMER_MESSAGE_PREFIX",
    "run_agent",
    "timer_cut",
    "timer_message",
    "timer_of",
]

TIMER_MESSAGE_PREFIX = "timer-"


def timer_of(message: Message) -> dict[str, Any] | None:
    """The timer a queued message stands for, or None for any other message."""
    timer = message.metadata.get("timer")
    if isinstance(timer, dict) and message.id.startswith(TIMER_MESSAGE_PREFIX):
        return timer
    return None


def timer_message(timer: StoredTimer) -> Message:
    """The message a fired timer is queued as (built from stored, checked JSON)."""
    payload = timer.payload
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return Message.model_construct(
        id=TIMER_MESSAGE_PREFIX + timer.id,
        role="user",
        content=text,
        created_at=timer.due,
        metadata={
            # What people see (events, the page): a note that the timer fired.
            "display": {
                "id": TIMER_MESSAGE_PREFIX + timer.id,
                "role": "system",
                "content": f"Timer {timer.key} fired",
                "created_at": timer.due.isoformat(),
            },
            "timer": {
                "key": timer.key,
                "id": timer.id,
                "due": timer.due.isoformat(),
                "payload": payload,
            },
        },
    )


def timer_cut(queued: list[Message]) -> int:
    """How many queued messages the next turn takes: a timer's message alone, or
    the messages before the first timer's."""
    for i, message in enumerate(queued):
        if timer_of(message) is not None:
            return i or 1
    return len(queued)


async def run_agent(agent: Any, turn: Turn, last: Message | None) -> Any:
    """Call the agent for a turn whose last taken message is ``last`` (None: it took
    none): ``on_timer`` for a timer's turn, else ``run``."""
    timer = None if last is None else timer_of(last)
    if timer is not None:
        hook: Callable[[Turn, Any], Awaitable[Any]] | None = getattr(agent, "on_timer", None)
        if hook is not None:
            return await hook(turn, timer.get("payload"))
    return await agent.run(turn)
