"""The queue of user messages waiting for the next turn, and when it is held.

Queued messages live in ``State.queued`` (so they are saved with the State and
survive a restart or a stop) and are bounded by ``max_queued``. After an
interrupt, a pause, an error or a cancel the queue is *held*: it waits for the
user (a send, a resume, a dismiss) instead of running by itself. A crash
restart or a send lifts the hold. A turn cut short by a stop hands its messages
back to the front of the queue, unheld, so the next wake answers them.
"""

from __future__ import annotations

from typing import Any

from .._errors import QueueFull
from ..state import Message, State

__all__: list[str] = ["HeldQueue"]


class HeldQueue:
    """The hold flag and the rules that move messages between queue and history."""

    __slots__ = ("held", "taken")

    def __init__(self) -> None:
        self.held = False
        self.taken = 0  # how many queued messages the current turn took

    def check_room(self, state: State, max_queued: int, conversation_id: str) -> None:
        if len(state.queued) >= max_queued:
            raise QueueFull(
                f"conversation {conversation_id!r} already has "
                f"{len(state.queued)} queued messages (max_queued={max_queued})"
            )

    def ready(self, state: State) -> bool:
        """True when queued messages should run as the next turn now."""
        return bool(state.queued) and not self.held

    def take(self, state: State) -> list[Message]:
        """Start a turn: the queued messages join the history, in order."""
        self.held = False
        taken = state.queued
        state.queued = []
        state.messages.extend(taken)
        self.taken = len(taken)
        return taken

    def give_back(self, state: State, history: list[Message], mark: int, taken: int) -> None:
        """A turn cut short by a stop: its user messages return to the front of the queue."""
        back = history[mark - taken : mark]
        del history[mark - taken : mark]
        state.queued[:0] = back

    def held_after_boot(self, state: State, stored_lifecycle: str | None, restored: bool) -> None:
        """On a start: messages left mid-turn run; ones held before a stop stay held."""
        self.held = state.interrupt is not None or (
            restored and stored_lifecycle not in ("turn_start", "queued")
        )


def abandon_interrupt(state: State, agent: Any, adopt: Any) -> State:
    """A send on an interrupted session abandons the interrupt, recorded by the agent or us."""
    interrupt = state.interrupt
    assert interrupt is not None
    state.interrupt = None
    hook = getattr(agent, "abandon", None)
    if hook is not None:
        result: State = adopt(hook(state, interrupt), state)
        return result
    state.metadata.setdefault("abandoned_interrupts", []).append(interrupt.model_dump(mode="json"))
    return state
