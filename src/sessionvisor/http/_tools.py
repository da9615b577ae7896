"""Tool calls as both frontend protocols see them: which events are calls and results.

An agent reports its tool calls with ``AgentEvent``s (the pydantic-ai
adapter's ``"tool_call"`` and ``"tool_result"``, each naming ``tool_call_id``
and ``tool_name``). ``tool_event`` says which ones are; ``ToolLedger`` keeps
what a stream has told its client about each call, so that a call is announced
once and answered once, whatever order the events come in. The AG-UI and AI
SDK translators only turn what these say into their own chunks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ..sessions import AgentEvent
from ._interrupts import Decision

__all__ = ["ToolCallEvent", "ToolLedger", "ToolResultEvent", "tool_event"]


@attrs.frozen(kw_only=True)
class ToolCallEvent:
    """The agent called a tool (``args``: what it passed, may be None)."""

    call_id: str
    name: str
    args: Any


@attrs.frozen(kw_only=True)
class ToolResultEvent:
    """A tool the agent called has returned ``content``."""

    call_id: str
    name: str
    content: Any


def tool_event(event: AgentEvent) -> ToolCallEvent | ToolResultEvent | None:
    """What ``event`` says about a tool call, or None when it is another agent event.

    Only an event naming a str ``tool_call_id`` and ``tool_name`` in a mapping
    ``data`` is one; anything else goes to the client as an agent event.
    """
    data = event.data if isinstance(event.data, Mapping) else {}
    call_id = data.get("tool_call_id")
    name = data.get("tool_name")
    if not isinstance(call_id, str) or not isinstance(name, str):
        return None
    if event.name == "tool_call":
        return ToolCallEvent(call_id=call_id, name=name, args=data.get("args"))
    if event.name == "tool_result":
        return ToolResultEvent(call_id=call_id, name=name, content=data.get("content"))
    return None


class ToolLedger:
    """The tool calls one stream's client holds, and which of them have their answer.

    ``held``: calls the client has (announced by this stream, or sent back by
    the client with its answer); ``answered``: those with a result or a denial;
    ``awaiting``: approved calls still waiting for their result, in order.
    """

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.answered: set[str] = set()
        self.awaiting: list[str] = []

    def take_decisions(self, decisions: Iterable[Decision]) -> list[str]:
        """Hold the calls the client answered in its request; return the denied ones.

        A denial and an output the client gave are answers already; an approval
        waits for the tool's result (or ends as ``{"approved": True}``).
        """
        denied: list[str] = []
        for d in decisions:
            self.held.add(d.call_id)
            if d.approved is None:
                self.answered.add(d.call_id)  # the client gave the output itself
            elif d.approved is False:
                self.answered.add(d.call_id)
                denied.append(d.call_id)
            else:
                self.awaiting.append(d.call_id)
        return denied

    def announce(self, call_id: str) -> bool:
        """Whether the client must be told of this call now (it is then held)."""
        if call_id in self.held:
            return False
        self.held.add(call_id)
        return True

    def answer(self, call_id: str) -> bool:
        """Whether this call's result must be sent now (it then counts as answered).

        Only a held call gets a result, and only one.
        """
        if call_id not in self.held or call_id in self.answered:
            return False
        self.answered.add(call_id)
        return True

    def returned(self, call_id: str) -> None:
        """The tool's own result came: the call no longer waits for one."""
        if call_id in self.awaiting:
            self.awaiting.remove(call_id)

    def next_awaiting(self) -> str | None:
        """The oldest approved call still waiting, for a tool message that names none."""
        return self.awaiting.pop(0) if self.awaiting else None

    def drain_awaiting(self) -> list[str]:
        """The approved calls still waiting when the turn ends (they wait no more)."""
        waiting, self.awaiting = self.awaiting, []
        return waiting
