"""The ``Agent`` protocol, the ``Turn`` an agent runs, and its outcomes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from ..state import Content, State

__all__ = ["Agent", "Done", "Interrupt", "Outcome", "Pause", "Turn", "TurnSink"]


@attrs.frozen
class Done:
    """The turn finished. ``reply`` (if given) is appended as the assistant's message.

    Without ``reply``, text streamed with ``turn.delta`` becomes the reply.
    """

    state: State
    reply: Content | None = None


@attrs.frozen
class Interrupt:
    """The agent needs an answer (``kind="question"``) or an acknowledgement (``"notice"``)."""

    state: State
    data: Any = None
    kind: Literal["question", "notice"] = "question"
    reply: Content | None = None


@attrs.frozen
class Pause:
    """The agent stopped on purpose; the next message resumes the conversation."""

    state: State
    reason: str = ""
    reply: Content | None = None


Outcome = Done | Interrupt | Pause


class TurnSink(Protocol):
    """What a turn reports to; implemented by the runtime."""

    def _turn_delta(self, text: str) -> None: ...
    def _turn_emit(self, name: str, data: Any) -> None: ...
    def _turn_queue(self, content: Content) -> None: ...


class Turn:
    """One run of an agent over a conversation.

    Attributes:
        state: the agent's working copy of the conversation's State. Append to
            ``state.messages`` or build a new State; return it in the outcome.
        agent_id, conversation_id: who and what this turn is for.
        scope: the trusted scope of the request that woke the session (may be None).
        extra: the factory's ``SessionOpts.extra``, never inspected by the runtime.
    """

    __slots__ = ("_sink", "_text", "agent_id", "conversation_id", "extra", "scope", "state")

    def __init__(
        self,
        *,
        state: State,
        agent_id: str,
        conversation_id: str,
        scope: Any = None,
        extra: Mapping[str, Any] | None = None,
        sink: TurnSink | None = None,
    ) -> None:
        self.state = state
        self.agent_id = agent_id
        self.conversation_id = conversation_id
        self.scope = scope
        self.extra: Mapping[str, Any] = extra if extra is not None else {}
        self._sink = sink
        self._text: list[str] = []

    def delta(self, text: str) -> None:
        """Stream a piece of the reply; subscribers get it as a ``Delta`` event."""
        if not isinstance(text, str):
            raise TypeError(f"delta text must be a str, got {type(text).__name__}")
        self._text.append(text)
        if self._sink is not None:
            self._sink._turn_delta(text)

    def emit(self, name: str, data: Any = None) -> None:
        """Publish a custom ``AgentEvent(name, data)`` to subscribers."""
        if not isinstance(name, str) or not name:
            raise ValueError("event name must be a non-empty str")
        if self._sink is not None:
            self._sink._turn_emit(name, data)

    def queue_message(self, content: Content) -> None:
        """Queue a follow-up user message (e.g. from a tool); it runs as the next turn."""
        if self._sink is None:
            raise RuntimeError("this turn is not attached to a session")
        self._sink._turn_queue(content)

    @property
    def streamed_text(self) -> str:
        """The text streamed with ``delta`` so far."""
        return "".join(self._text)


@runtime_checkable
class Agent(Protocol):
    """An agent runs turns. Optional hooks, found by name when present:

    - ``async resume(turn, answer) -> Outcome``: continue after an interrupt.
    - ``async on_start(state) -> State``: called when the actor starts or restarts.
    - ``restorable(interrupt) -> bool``: can this interrupt be answered after a restart?
    - ``abandon(state, interrupt) -> State``: record an interrupt the user talked past.

    Raising from ``run`` is a failed turn; cancellation is anyio cancellation.
    """

    async def run(self, turn: Turn) -> Outcome: ...
