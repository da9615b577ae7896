"""Interrupts as the tool calls a frontend can show, and frontend answers as ``resume`` answers.

Both frontend protocols only know how to ask a person about a *tool call*. The
pydantic-ai adapter's interrupts already are tool calls (``data["calls"]``:
``tool_call_id``, ``tool_name``, ``args``, ``kind``). Any other agent's
question gets one synthesized call, ``INTERRUPT_TOOL``, whose id is the
interrupt's own id (``PendingInterrupt.id``).

What a client answers names the interrupt: the AI SDK's ``approvalId`` and the
AG-UI interrupt ``id`` are the call's ``answer_id``, which is the interrupt id
for a synthesized call and ``"<interrupt id>:<tool call id>"`` for one of the
agent's own calls (whose ids an agent may reuse from one question to the
next). An answer naming an interrupt that is no longer pending is refused
(409), so a retried or replayed answer never answers a later question, even an
identical one. An answer that names only the tool call (an older client, or a
tool output, which carries no approval id) answers the pending interrupt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from ..state import PendingInterrupt
from ._errors import HTTPError

__all__ = [
    "INTERRUPT_TOOL",
    "Decision",
    "ToolCall",
    "answer_id",
    "interrupt_calls",
    "resume_answer",
]

#: The tool name of the call synthesized for an interrupt that is not a tool call.
INTERRUPT_TOOL = "sessionvisor_interrupt"


@attrs.frozen
class ToolCall:
    """One call a pending interrupt waits on.

    ``kind``: ``"approval"`` (answered yes or no) or ``"external"`` (answered
    with the tool's result); ``native``: the agent's own call (pydantic-ai),
    not one synthesized for a plain interrupt; ``interrupt_id``: the id of the
    interrupt that waits on it.
    """

    id: str
    name: str
    args: Any
    kind: Literal["approval", "external"]
    native: bool
    interrupt_id: str
    question: str | None = None

    @property
    def answer_id(self) -> str:
        """The id an answer to this call names (AI SDK ``approvalId``, AG-UI interrupt id)."""
        return answer_id(self.interrupt_id, self.id)


@attrs.frozen
class Decision:
    """A frontend's answer to one call: an approval (``approved``) or a result (``output``).

    ``answer_id``: the id the answer named (an approval id, an AG-UI interrupt
    id), None when it named the tool call only.
    """

    call_id: str
    approved: bool | None = None
    reason: str | None = None
    output: Any = None
    error: str | None = None
    answer_id: str | None = None


def answer_id(interrupt_id: str, call_id: str) -> str:
    """The id a client's answer to ``call_id`` of interrupt ``interrupt_id`` names."""
    return interrupt_id if call_id == interrupt_id else f"{interrupt_id}:{call_id}"


def _native_calls(data: Any) -> list[Mapping[str, Any]] | None:
    if not isinstance(data, Mapping):
        return None
    calls = data.get("calls")
    if not isinstance(calls, list) or not calls:
        return None
    if not all(
        isinstance(c, Mapping)
        and isinstance(c.get("tool_call_id"), str)
        and isinstance(c.get("tool_name"), str)
        for c in calls
    ):
        return None
    return calls


def _question(data: Any) -> str | None:
    if isinstance(data, str):
        return data
    if isinstance(data, Mapping):
        for key in ("question", "message", "prompt"):
            value = data.get(key)
            if isinstance(value, str):
                return value
    return None


def interrupt_calls(interrupt: PendingInterrupt | None) -> list[ToolCall]:
    """The tool calls ``interrupt`` waits on (none for a ``notice`` or no interrupt)."""
    if interrupt is None or interrupt.kind != "question":
        return []
    native = _native_calls(interrupt.data)
    if native is not None:
        return [
            ToolCall(
                id=str(c["tool_call_id"]),
                name=str(c["tool_name"]),
                args=c.get("args") if c.get("args") is not None else {},
                kind="approval" if c.get("kind", "approval") == "approval" else "external",
                native=True,
                interrupt_id=interrupt.id,
            )
            for c in native
        ]
    return [
        ToolCall(
            id=interrupt.id,
            name=INTERRUPT_TOOL,
            args=interrupt.data if interrupt.data is not None else {},
            kind="approval",
            native=False,
            interrupt_id=interrupt.id,
            question=_question(interrupt.data),
        )
    ]


def resume_answer(
    conversation_id: str, interrupt: PendingInterrupt | None, decisions: list[Decision]
) -> Any:
    """The ``resume`` answer for ``decisions`` about the pending ``interrupt``.

    pydantic-ai calls get ``{"calls": {id: {"approved", "reason"} | {"result"} |
    {"error"}}}``; the synthesized call of a plain interrupt gets
    ``{"approved": bool, "reason": ...}`` (or the output the frontend gave).

    The caller passes ``interrupt.id`` to ``resume`` with it, so that an
    interrupt answered or replaced in the meantime makes the resume a 409 too.

    Raises:
        HTTPError: 409 when nothing is pending, a decision names a call the
            interrupt does not wait on, or names another interrupt (its
            ``answer_id``: a retried or replayed answer to an earlier question);
            400 when there is no decision.
    """
    calls = {c.id: c for c in interrupt_calls(interrupt)}
    if not calls:
        raise HTTPError(
            409,
            "InvalidStatus",
            f"conversation {conversation_id!r} has no pending tool call to answer",
        )
    if not decisions:
        raise HTTPError(400, "ValidationError", "the request answers no pending tool call")
    strangers = sorted({d.call_id for d in decisions} - set(calls))
    if strangers:
        raise HTTPError(
            409,
            "InvalidStatus",
            f"conversation {conversation_id!r} is not waiting on tool call(s) {strangers}; "
            f"pending: {sorted(c.answer_id for c in calls.values())}",
        )
    stale = sorted(
        d.answer_id
        for d in decisions
        if d.answer_id is not None and d.answer_id != calls[d.call_id].answer_id
    )
    if stale:
        raise HTTPError(
            409,
            "InvalidStatus",
            f"conversation {conversation_id!r}: {stale} answer an interrupt that is no "
            f"longer pending; pending: {sorted(c.answer_id for c in calls.values())}",
        )
    first = next(iter(calls.values()))
    if not first.native:
        d = decisions[0]
        if d.approved is None:
            return d.output if d.error is None else {"approved": False, "reason": d.error}
        answer: dict[str, Any] = {"approved": d.approved}
        if d.reason:
            answer["reason"] = d.reason
        return answer
    per_call: dict[str, Any] = {}
    for d in decisions:
        if d.approved is not None:
            value: dict[str, Any] = {"approved": d.approved}
            if d.reason and not d.approved:
                value["reason"] = d.reason
            per_call[d.call_id] = value
        elif d.error is not None:
            per_call[d.call_id] = {"error": d.error}
        else:
            per_call[d.call_id] = {"result": d.output}
    return {"calls": per_call}
