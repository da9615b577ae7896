"""Interrupts as the tool calls a frontend can show, and frontend answers as ``resume`` answers.

Both frontend protocols only know how to ask a person about a *tool call*. The
pydantic-ai adapter's interrupts already are tool calls (``data["calls"]``:
``tool_call_id``, ``tool_name``, ``args``, ``kind``). Any other agent's
question gets one synthesized call, ``INTERRUPT_TOOL``, whose id is derived
from the interrupt itself, so every stream (and a replay of it) names the same
call and an answer can be checked against the interrupt that is pending.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from ..state import PendingInterrupt
from ._errors import HTTPError

__all__ = ["INTERRUPT_TOOL", "Decision", "ToolCall", "interrupt_calls", "resume_answer"]

#: The tool name of the call synthesized for an interrupt that is not a tool call.
INTERRUPT_TOOL = "sessionvisor_interrupt"


@attrs.frozen
class ToolCall:
    """One call a pending interrupt waits on.

    ``kind``: ``"approval"`` (answered yes or no) or ``"external"`` (answered
    with the tool's result); ``native``: the agent's own call (pydantic-ai),
    not one synthesized for a plain interrupt.
    """

    id: str
    name: str
    args: Any
    kind: Literal["approval", "external"]
    native: bool
    question: str | None = None


@attrs.frozen
class Decision:
    """A frontend's answer to one call: an approval (``approved``) or a result (``output``)."""

    call_id: str
    approved: bool | None = None
    reason: str | None = None
    output: Any = None
    error: str | None = None


def _synthetic_id(interrupt: PendingInterrupt) -> str:
    raw = json.dumps(
        [interrupt.kind, interrupt.data], sort_keys=True, separators=(",", ":"), default=str
    )
    return "interrupt-" + hashlib.sha256(raw.encode()).hexdigest()[:20]


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
            )
            for c in native
        ]
    return [
        ToolCall(
            id=_synthetic_id(interrupt),
            name=INTERRUPT_TOOL,
            args=interrupt.data if interrupt.data is not None else {},
            kind="approval",
            native=False,
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

    Raises:
        HTTPError: 409 when nothing is pending or a decision names a call the
            interrupt does not wait on; 400 when there is no decision.
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
            f"pending: {sorted(calls)}",
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
