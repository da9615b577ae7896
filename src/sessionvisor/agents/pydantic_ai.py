"""``PydanticAIAgent``: run a ``pydantic_ai.Agent`` as a sessionvisor agent.

Needs the ``pydantic-ai`` extra (the ``pydantic-ai-slim`` package) and runs on
asyncio only, because pydantic-ai does.

What the adapter keeps in the conversation's ``State``:

- ``metadata["pydantic_ai_messages"]``: pydantic-ai's own message history,
  dumped with its ``ModelMessagesTypeAdapter`` (JSON mode), so a conversation
  restored from a store continues with every tool call and tool result.
- ``metadata["pydantic_ai_pending"]``: the deferred tool calls an interrupt
  waits on (only while one does).
- ``metadata["pydantic_ai_cursor"]``: the id of the last ``Message`` handed to
  pydantic-ai, so each turn sends only the user messages that came after it.
- ``metadata["pydantic_ai_usage"]``: token and request totals over all runs.
- readable ``Message``s in ``state.messages``: the runtime appends the user's;
  the adapter appends the assistant's reply.

Deferred tool calls (``requires_approval=True`` or ``ApprovalRequired``, and
external tools or ``CallDeferred``) end the turn with an ``Interrupt`` whose
``data`` is ``{"calls": [{"tool_call_id", "tool_name", "args", "kind"}]}``
(``kind``: ``"approval"``, ``"external"``, ``"question"`` or
``"unknown_outcome"``, below); ``resume`` answers them (see
``PydanticAIAgent.resume`` for the answer's shapes).

Durable turns: the adapter journals each run by itself. Each model request is
the step ``model:<n>`` (the n-th request of the run; its result is the
``ModelResponse``, its usage is counted in ``State.usage``) and each tool call
the step ``tool:<tool name>:<tool call id>`` (its result is what the tool
returned, or the retry, failure or deferral it raised). A turn cut by a crash,
a failover or a stop runs again over the same prompt and history, so it makes
the same requests and calls in the same order: completed responses and tool
calls come back from the journal (a replayed response's text is streamed
again), and only a request cut before its response was stored is sent to the
model again. Tool calls of a run go one at a time, so their steps keep their
order. A tool cut while it ran is called again when it is idempotent (named in
``idempotent_tools=`` or declared with ``metadata={"idempotent": True}``);
otherwise the rerun ends in an ``Interrupt`` listing it with
``"kind": "unknown_outcome"``, answered ``"retry"`` (call it again) or
``"skip"`` (the model is told ``SKIPPED_MESSAGE``: it may or may not have
taken effect, and was not retried). ``metadata["pydantic_ai_usage"]`` is kept
for compatibility; both it and ``State.usage`` count each response once.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import AsyncIterable, Callable, Collection, Mapping, Sequence
from typing import Any

from pydantic_ai import Agent as _PydanticAgent
from pydantic_ai import ModelMessagesTypeAdapter
from pydantic_ai.exceptions import ToolFailed
from pydantic_ai.messages import (
    AgentStreamEvent,
    DocumentUrl,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ImageUrl,
    ModelMessage,
    ModelResponse,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ToolCallPart,
    UserContent,
)
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, RunContext, ToolApproved
from pydantic_ai.tools import ToolDenied as _ToolDenied
from pydantic_ai.usage import UsageLimits
from pydantic_core import to_jsonable_python

from .._errors import InvalidAnswer
from ..state import Message, PendingInterrupt, State
from ._agent import Done, Interrupt, Outcome, Turn
from ._pydantic_ai_steps import UNKNOWN_OUTCOME_MARK, TurnJournal

__all__ = [
    "CURSOR_KEY",
    "HISTORY_KEY",
    "MARKS_KEY",
    "MOVED_ON_MESSAGE",
    "PENDING_KEY",
    "RETRY",
    "SKIP",
    "SKIPPED_MESSAGE",
    "UNKNOWN_MOVED_ON_MESSAGE",
    "UNKNOWN_OUTCOME",
    "USAGE_KEY",
    "InvalidAnswer",
    "PydanticAIAgent",
    "load_history",
]

#: Where pydantic-ai's message history lives in ``State.metadata``.
HISTORY_KEY = "pydantic_ai_messages"
#: Where the deferred tool calls of a pending interrupt live in ``State.metadata``.
PENDING_KEY = "pydantic_ai_pending"
#: Where the id of the last message handed to pydantic-ai lives in ``State.metadata``.
CURSOR_KEY = "pydantic_ai_cursor"
#: Where, per user message handed to pydantic-ai, the length its history had before
#: that message lives in ``State.metadata`` (a regenerate or an edit cuts back to it).
MARKS_KEY = "pydantic_ai_marks"
#: Where the usage totals of all runs live in ``State.metadata``.
USAGE_KEY = "pydantic_ai_usage"

#: What the model is told about deferred calls the user talked past instead of answering.
MOVED_ON_MESSAGE = "The user sent a new message instead of answering; this tool call was not made."
#: What the model is told about a tool call of unknown outcome that a human chose to skip.
SKIPPED_MESSAGE = (
    "This tool call was interrupted while it ran: it may or may not have taken effect. "
    "It was not retried."
)
#: What the model is told about a call of unknown outcome the user talked past.
UNKNOWN_MOVED_ON_MESSAGE = (
    "This tool call was interrupted while it ran: it may or may not have taken effect. "
    "The user sent a new message instead of deciding, so it was not retried."
)
#: The answers a tool call of unknown outcome takes.
RETRY, SKIP = "retry", "skip"
#: The ``kind`` of a pending call that was cut while its (non-idempotent) tool ran.
UNKNOWN_OUTCOME = "unknown_outcome"

_USAGE_FIELDS = ("requests", "tool_calls", "input_tokens", "output_tokens")

DepsFactory = Callable[[Turn], Any]


def load_history(state: State) -> list[ModelMessage]:
    """Return pydantic-ai's message history stored in ``state`` (empty when none).

    Raises:
        ValueError: the stored history is not valid pydantic-ai messages.
    """
    raw = state.metadata.get(HISTORY_KEY)
    if not raw:
        return []
    try:
        return ModelMessagesTypeAdapter.validate_python(raw)
    except ValueError as exc:
        raise ValueError(
            f"state.metadata[{HISTORY_KEY!r}] is not a valid pydantic-ai message history: {exc}"
        ) from exc


class PydanticAIAgent:
    """Run a ``pydantic_ai.Agent`` over a conversation. Runs on asyncio only.

    pydantic-ai schedules its own asyncio tasks, so a session using this agent
    must run under the asyncio backend of anyio; on any other backend a turn
    fails with a ``RuntimeError`` that says so.

    Each turn sends the user messages that arrived since the previous turn as
    the prompt, together with pydantic-ai's full message history kept in the
    State (see the module docstring), streams the model's text with
    ``turn.delta``, reports tool calls and results as ``AgentEvent``s
    ``"tool_call"``/``"tool_result"`` (unless ``tool_events=False``), and
    appends the reply as an assistant ``Message``. Deferred tool calls end the
    turn with an ``Interrupt`` answered by ``resume``; a user who sends a new
    message instead of answering gets the pending calls closed out as denied
    (``MOVED_ON_MESSAGE``) so the model knows they did not happen.

    The agent's ``output_type`` gains ``DeferredToolRequests`` for each run
    when it lacks it. An agent with output validators cannot have its output
    type changed per run: give it ``output_type=[..., DeferredToolRequests]``
    yourself if it has deferred tools.

    Args:
        agent: the pydantic-ai agent (with its model, tools and instructions).
        deps: ``deps(turn)`` (sync or async) returns the run's dependencies,
            e.g. built from ``turn.scope`` and ``turn.extra``; None passes none.
        usage_limits: limits for each run (``pydantic_ai.usage.UsageLimits``);
            exceeding them is a failed turn.
        model_settings: model settings for each run.
        stream: stream text as it is generated (default). A model that cannot
            stream (a ``FunctionModel`` without ``stream_function``) needs
            ``stream=False``; the reply then arrives as one delta, and no tool
            events are published.
        tool_events: publish ``"tool_call"`` and ``"tool_result"`` events.
        idempotent_tools: names of tools that may safely run twice: one cut
            while it ran is called again by the rerun instead of asking a human
            (a tool can also say so with ``metadata={"idempotent": True}``).
        name: a name for logs and ``repr``.

    Raises:
        TypeError: ``agent`` is not a ``pydantic_ai.Agent`` or ``deps`` is not callable.
    """

    def __init__(
        self,
        agent: _PydanticAgent[Any, Any],
        *,
        deps: DepsFactory | None = None,
        usage_limits: UsageLimits | None = None,
        model_settings: ModelSettings | None = None,
        stream: bool = True,
        tool_events: bool = True,
        idempotent_tools: Collection[str] = (),
        name: str | None = None,
    ) -> None:
        if not isinstance(agent, _PydanticAgent):
            raise TypeError(f"PydanticAIAgent needs a pydantic_ai.Agent, got {agent!r}")
        if deps is not None and not callable(deps):
            raise TypeError(f"deps must be a callable (turn) -> deps, got {deps!r}")
        if isinstance(idempotent_tools, str):
            raise TypeError("idempotent_tools must be a collection of tool names, not a str")
        self.agent = agent
        self._deps = deps
        self._usage_limits = usage_limits
        self._model_settings = model_settings
        self._stream = stream
        self._tool_events = tool_events
        self.idempotent_tools = frozenset(idempotent_tools)
        self.name = name or agent.name or "pydantic_ai_agent"
        self._output_type = _run_output_type(agent)

    def __repr__(self) -> str:
        return f"PydanticAIAgent({self.name})"

    # -- the Agent protocol ----------------------------------------------------------

    async def run(self, turn: Turn) -> Outcome:
        """Run one turn: the new user messages as the prompt, over the stored history.

        Returns:
            ``Done`` with the reply appended, or ``Interrupt`` listing deferred tool calls.

        Raises:
            RuntimeError: not running on asyncio.
            ValueError: the stored history cannot be read.
            Exception: whatever pydantic-ai or the model raises (a failed turn),
                e.g. ``UsageLimitExceeded``.
        """
        _require_asyncio()
        state = turn.state
        pending = _pending_calls(state)
        results = None
        if pending:
            # The user talked past an interrupt: close its calls out so the model
            # knows they were not made, and so pydantic-ai accepts a new prompt.
            results = _moved_on_results(pending)
        return await self._run(turn, results)

    async def resume(self, turn: Turn, answer: Any) -> Outcome:
        """Answer the pending deferred tool calls and continue the run.

        ``answer`` is one of:

        - ``True``/``False`` or ``{"approved": bool, "reason": str}``: approve
          or deny every call that needs approval (``reason`` is told to the model);
        - ``{"calls": {tool_call_id: value}}``, optionally next to
          ``"approved"`` as the default for the calls it does not name, where
          ``value`` is ``True``/``False``, ``{"approved": bool, "reason": str,
          "override_args": {...}}`` for an approval, or ``{"result": ...}`` /
          ``{"error": "message"}`` for an external call (a plain value is
          taken as the result);
        - for calls of kind ``"unknown_outcome"`` (cut while their tool ran):
          ``"retry"`` or ``"skip"`` as the whole answer (for every such call,
          when no other call is pending), or per call in ``"calls"``, e.g.
          ``{"approved": True, "calls": {"call-2": "retry"}}``.

        An answer that does not fit (an unknown id, an external call without a
        result) does not fail the turn: it ends in the same ``Interrupt`` again,
        with ``data["error"]`` saying what was wrong (also published as the
        ``AgentEvent("invalid_answer")``).

        Returns:
            ``Done``, or ``Interrupt`` when the continued run defers again or the
            answer did not fit.

        Raises:
            RuntimeError: not running on asyncio.
            ValueError: no deferred tool calls are pending in the state.
            Exception: whatever pydantic-ai or the model raises.
        """
        _require_asyncio()
        state = turn.state
        pending = _pending_calls(state)
        if not pending:
            raise ValueError(
                f"conversation {turn.conversation_id!r} has no pending pydantic-ai tool calls "
                "to resume"
            )
        try:
            results = answer_to_results(pending, answer)
        except InvalidAnswer as exc:
            turn.emit("invalid_answer", {"error": str(exc)})
            return Interrupt(state, data={"calls": pending, "error": str(exc)})
        return await self._run(turn, results)

    def restorable(self, interrupt: PendingInterrupt) -> bool:
        """Always True: the history and the pending calls persist with the State."""
        return True

    # -- running -----------------------------------------------------------------------

    async def _run(self, turn: Turn, results: DeferredToolResults | None) -> Outcome:
        state = turn.state
        history = _without_superseded(state, load_history(state))
        asked = _unseen_user_messages(state)
        prompt = _prompt_of(state)
        if prompt is None and results is None and not history:
            raise ValueError(f"conversation {turn.conversation_id!r} has no user message to answer")
        deps = None
        if self._deps is not None:
            deps = self._deps(turn)
            if inspect.isawaitable(deps):
                deps = await deps
        streamer = _Streamer(turn, tool_events=self._tool_events) if self._stream else None
        journal = TurnJournal(
            turn,
            idempotent_tools=self.idempotent_tools,
            stream_handler=streamer.handle if streamer is not None else None,
        )
        # One tool call at a time: steps are numbered in call order, which a rerun
        # must repeat (tools running side by side would race for the numbers).
        with _PydanticAgent.parallel_tool_call_execution_mode("sequential"):
            result = await self.agent.run(
                prompt,
                output_type=self._output_type,
                message_history=history,
                deferred_tool_results=results,
                conversation_id=turn.conversation_id,
                deps=deps,
                model_settings=self._model_settings,
                usage_limits=self._usage_limits,
                event_stream_handler=streamer.handle if streamer is not None else None,
                capabilities=[journal],
                infer_name=False,
            )
        new = result.new_messages()
        if asked:
            # Where pydantic-ai's history stood before these messages: a regenerate or
            # an edit that supersedes one of them cuts the history back to there.
            marks = dict(state.metadata.get(MARKS_KEY) or {})
            marks.update((message.id, len(history)) for message in asked)
            state.metadata[MARKS_KEY] = marks
        state.metadata[HISTORY_KEY] = ModelMessagesTypeAdapter.dump_python(
            result.all_messages(), mode="json"
        )
        _add_usage(state, result.usage)
        output = result.output
        reply = _text_of(new)
        if not isinstance(output, DeferredToolRequests | str):
            structured = json.dumps(to_jsonable_python(output, fallback=str))
            reply = f"{reply}\n\n{structured}" if reply else structured
        if streamer is not None:
            streamer.finish(reply)
        elif reply:
            turn.delta(reply)
        if reply:
            state.messages.append(
                Message(role="assistant", content=reply, metadata={"source": "pydantic_ai"})
            )
        if state.messages:
            state.metadata[CURSOR_KEY] = state.messages[-1].id
        if isinstance(output, DeferredToolRequests):
            calls = _describe_requests(output)
            state.metadata[PENDING_KEY] = calls
            return Interrupt(state, data={"calls": calls})
        state.metadata.pop(PENDING_KEY, None)
        return Done(state)


# -- streaming ---------------------------------------------------------------------------


class _Streamer:
    """Turns pydantic-ai's stream events into deltas and tool events of one turn."""

    def __init__(self, turn: Turn, *, tool_events: bool) -> None:
        self.turn = turn
        self.tool_events = tool_events
        self.sent: list[str] = []
        self.responses = 0

    def _text(self, text: str) -> None:
        if text:
            self.sent.append(text)
            self.turn.delta(text)

    async def handle(self, ctx: RunContext[Any], events: AsyncIterable[AgentStreamEvent]) -> None:
        # Called once per model request (and per tool-calling step); text of a
        # later response is separated from earlier text as ``_text_of`` does.
        first_text = True
        async for event in events:
            if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                if first_text:
                    first_text = False
                    if self.sent:
                        self._text("\n\n")
                self._text(event.part.content)
            elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                self._text(event.delta.content_delta)
            elif self.tool_events and isinstance(event, FunctionToolCallEvent):
                self.turn.emit("tool_call", _call_info(event.part))
            elif self.tool_events and isinstance(event, FunctionToolResultEvent):
                part = event.part
                self.turn.emit(
                    "tool_result",
                    {
                        "tool_call_id": part.tool_call_id,
                        "tool_name": part.tool_name,
                        "content": to_jsonable_python(part.content, fallback=str),
                    },
                )

    def finish(self, reply: str) -> None:
        """Stream what the reply has beyond what was streamed (e.g. a structured output)."""
        sent = "".join(self.sent)
        if reply.startswith(sent):
            self._text(reply[len(sent) :])


def _text_of(messages: Sequence[ModelMessage]) -> str:
    """The text the model wrote in ``messages``: each response's text, blank-line separated."""
    texts = []
    for message in messages:
        if isinstance(message, ModelResponse):
            text = "".join(p.content for p in message.parts if isinstance(p, TextPart))
            if text:
                texts.append(text)
    return "\n\n".join(texts)


# -- prompts, history, usage ---------------------------------------------------------------


def _without_superseded(state: State, history: list[ModelMessage]) -> list[ModelMessage]:
    """pydantic-ai's history without what a regenerate or an edit superseded: cut back
    to where it stood before the earliest superseded user message was handed over."""
    marks = state.metadata.get(MARKS_KEY)
    if not state.superseded or not isinstance(marks, dict):
        return history
    cuts = [marks[i] for i in state.superseded if isinstance(marks.get(i), int)]
    if not cuts:
        return history
    cut = min(cuts)
    state.metadata[MARKS_KEY] = {k: v for k, v in marks.items() if isinstance(v, int) and v < cut}
    return history[:cut]


def _unseen_user_messages(state: State) -> list[Message]:
    """The user messages after the cursor (see ``_prompt_of``), oldest first."""
    messages = state.messages
    cursor = state.metadata.get(CURSOR_KEY)
    start = None
    if cursor is not None:
        for i in range(len(messages) - 1, -1, -1):
            if messages[i].id == cursor:
                start = i + 1
                break
    if start is None:
        start = 0
        for i in range(len(messages) - 1, -1, -1):
            if messages[i].role == "assistant":
                start = i + 1
                break
    return [m for m in messages[start:] if m.role == "user"]


def _prompt_of(state: State) -> str | list[UserContent] | None:
    """The user messages pydantic-ai has not seen yet, as one prompt (None: there are none).

    They are the user messages after the cursor; without a cursor (a history
    that never ran through this adapter) those after the last assistant message.
    """
    parts: list[UserContent] = []
    for message in _unseen_user_messages(state):
        if parts:
            parts.append("\n\n")
        parts.extend(_user_content(message))
    if not parts:
        return None
    if all(isinstance(p, str) for p in parts):
        return "".join(typing.cast(list[str], parts))
    return parts


def _user_content(message: Message) -> list[UserContent]:
    content = message.content
    if isinstance(content, str):
        return [content]
    out: list[UserContent] = []
    for part in content:
        kind = part.get("type")
        url = part.get("url")
        if kind == "text":
            out.append(str(part.get("text", "")))
        elif kind == "image_url" and isinstance(url, str):
            out.append(ImageUrl(url=url))
        elif kind == "document_url" and isinstance(url, str):
            out.append(DocumentUrl(url=url))
        else:
            # A part pydantic-ai has no type for still reaches the model, as JSON.
            out.append(json.dumps(part, default=str))
    return out


def _add_usage(state: State, usage: Any) -> None:
    totals = state.metadata.get(USAGE_KEY)
    totals = dict(totals) if isinstance(totals, Mapping) else {}
    for field in _USAGE_FIELDS:
        totals[field] = int(totals.get(field, 0)) + int(getattr(usage, field, 0) or 0)
    state.metadata[USAGE_KEY] = totals


def _run_output_type(agent: _PydanticAgent[Any, Any]) -> Any:
    """The ``output_type`` to run with: the agent's plus ``DeferredToolRequests``, or None."""
    spec = agent.output_type
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        items = list(spec)
    elif typing.get_origin(spec) in (typing.Union, types.UnionType):
        items = list(typing.get_args(spec))
    else:
        items = [spec]
    if DeferredToolRequests in items:
        return None
    # pydantic-ai refuses a per-run output type on an agent with output validators
    # (they expect the agent's own type); such an agent must list
    # DeferredToolRequests itself to use deferred tools.
    if getattr(agent, "_output_validators", None):
        return None
    return [*items, DeferredToolRequests]


def _require_asyncio() -> None:
    import asyncio

    try:
        asyncio.current_task()
    except RuntimeError:
        raise RuntimeError(
            "PydanticAIAgent runs on asyncio only (pydantic-ai uses asyncio tasks); "
            "run the SessionSupervisor with anyio's asyncio backend"
        ) from None


# -- deferred tool calls ----------------------------------------------------------------------


def _call_info(part: ToolCallPart) -> dict[str, Any]:
    return {
        "tool_call_id": part.tool_call_id,
        "tool_name": part.tool_name,
        "args": to_jsonable_python(part.args_as_dict(), fallback=str),
    }


def _describe_requests(requests: DeferredToolRequests) -> list[dict[str, Any]]:
    calls = []
    for part in [*requests.approvals, *requests.calls]:
        info = _call_info(part)
        info["kind"] = requests.kind(part.tool_call_id)
        meta = requests.metadata.get(part.tool_call_id)
        if isinstance(meta, Mapping) and meta.get(UNKNOWN_OUTCOME_MARK) is True:
            info["kind"] = UNKNOWN_OUTCOME
            meta = None
        if meta:
            info["metadata"] = to_jsonable_python(meta, fallback=str)
        calls.append(info)
    return calls


def _pending_calls(state: State) -> list[dict[str, Any]]:
    pending = state.metadata.get(PENDING_KEY)
    return list(pending) if isinstance(pending, list) else []


def _moved_on_results(pending: list[dict[str, Any]]) -> DeferredToolResults:
    results = DeferredToolResults()
    for call in pending:
        if call["kind"] == UNKNOWN_OUTCOME:
            results.approvals[call["tool_call_id"]] = _ToolDenied(UNKNOWN_MOVED_ON_MESSAGE)
        elif call["kind"] == "approval":
            results.approvals[call["tool_call_id"]] = _ToolDenied(MOVED_ON_MESSAGE)
        else:
            results.calls[call["tool_call_id"]] = ToolFailed(MOVED_ON_MESSAGE)
    return results


def answer_to_results(pending: list[dict[str, Any]], answer: Any) -> DeferredToolResults:
    """Map an answer given to ``resume`` onto pydantic-ai's ``DeferredToolResults``.

    See ``PydanticAIAgent.resume`` for the accepted shapes.

    Returns:
        The results, one per pending call.

    Raises:
        InvalidAnswer: the answer does not fit the pending calls.
    """
    default: Any = None
    unknown_default: Any = None
    per_call: Mapping[str, Any] = {}
    if isinstance(answer, bool):
        default = answer
    elif answer in (RETRY, SKIP):
        unknown_default = answer
    elif isinstance(answer, Mapping):
        unknown = set(answer) - {"approved", "reason", "calls"}
        if unknown:
            raise InvalidAnswer(
                f"unknown keys in the answer: {sorted(unknown)}; expected 'approved', "
                "'reason' and/or 'calls'"
            )
        if "approved" in answer:
            default = {"approved": answer["approved"], "reason": answer.get("reason")}
        calls = answer.get("calls", {})
        if not isinstance(calls, Mapping):
            raise InvalidAnswer("'calls' must map tool_call_id to an answer")
        per_call = calls
    else:
        raise InvalidAnswer(
            "expected True/False, 'retry'/'skip' or a mapping with 'approved' and/or 'calls', "
            f"got {answer!r}"
        )
    known = {call["tool_call_id"]: call for call in pending}
    strangers = set(per_call) - set(known)
    if strangers:
        raise InvalidAnswer(
            f"no pending tool call has id {sorted(strangers)}; pending: {sorted(known)}"
        )
    results = DeferredToolResults()
    for call_id, call in known.items():
        value = per_call.get(call_id, default)
        name = f"{call['tool_name']!r} ({call_id})"
        if call["kind"] == UNKNOWN_OUTCOME:
            value = per_call.get(call_id, unknown_default)
            if value not in (RETRY, SKIP):
                raise InvalidAnswer(
                    f"tool call {name} was cut while it ran and may or may not have taken "
                    "effect: answer 'retry' (call it again) or 'skip'"
                )
            results.approvals[call_id] = True if value == RETRY else _ToolDenied(SKIPPED_MESSAGE)
        elif call["kind"] == "approval":
            if value is None:
                raise InvalidAnswer(f"tool call {name} needs an approval (true/false)")
            results.approvals[call_id] = _approval(value, name)
        else:
            if call_id not in per_call:
                raise InvalidAnswer(
                    f"tool call {name} is run outside the agent: answer it with "
                    '{"calls": {id: {"result": ...}}}'
                )
            results.calls[call_id] = _call_result(value)
    return results


def _approval(value: Any, name: str) -> bool | ToolApproved | _ToolDenied:
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        approved = value.get("approved")
        if not isinstance(approved, bool):
            raise InvalidAnswer(f"tool call {name}: 'approved' must be true or false")
        if approved:
            override = value.get("override_args")
            if override is not None and not isinstance(override, Mapping):
                raise InvalidAnswer(f"tool call {name}: 'override_args' must be a mapping")
            return ToolApproved(override_args=dict(override) if override else None)
        reason = value.get("reason")
        return _ToolDenied(str(reason)) if reason else _ToolDenied()
    raise InvalidAnswer(f"tool call {name} needs true/false or {{'approved': ...}}, got {value!r}")


def _call_result(value: Any) -> Any:
    if isinstance(value, Mapping) and set(value) == {"result"}:
        return value["result"]
    if isinstance(value, Mapping) and set(value) == {"error"}:
        return ToolFailed(str(value["error"]))
    return value
