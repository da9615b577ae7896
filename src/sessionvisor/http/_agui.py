"""AG-UI (``@ag-ui/client``'s ``HttpAgent``, CopilotKit) on top of the supervisor.

``POST /ag-ui`` takes a ``RunAgentInput``: ``threadId`` is the conversation id.
The newest message, when it is a user message, is *sent* into the conversation
(the stored history is what the agent sees, not the client's copy); a
``resume`` list answers the pending interrupt instead, and so does a newest
``tool`` message that carries the result of a call the interrupt waits on.

The answer is one run: ``RUN_STARTED``, ``MESSAGES_SNAPSHOT`` (the stored
history, when the conversation existed before), ``TEXT_MESSAGE_*``,
``TOOL_CALL_*`` (the pydantic-ai adapter's tool calls, and the calls an
interrupt waits on), ``CUSTOM`` events named ``sessionvisor.<EventType>``
for statuses, queueing, restarts and the agent's own events, and then
``RUN_FINISHED`` (``outcome.type == "interrupt"`` while an interrupt waits)
or ``RUN_ERROR``. An outcome's interrupt ``id`` names the sessionvisor
interrupt (``ToolCall.answer_id`` in ``_interrupts``): a resume entry naming one
that is no longer pending is a 409, so a retried or replayed answer never
answers a later question, even an identical one. Events are built with the
``ag-ui-protocol`` package.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Literal

from ag_ui.core import (
    AssistantMessage,
    BaseEvent,
    CustomEvent,
    Interrupt,
    MessagesSnapshotEvent,
    ResumeEntry,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
    SystemMessage,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    ToolMessage,
    UserMessage,
)
from ag_ui.core import Message as AGUIMessage
from ag_ui.encoder import EventEncoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..sessions import (
    AgentEvent,
    Delta,
    Event,
    MessageAppended,
    SessionFailed,
    Shutdown,
    Status,
    StatusChanged,
)
from ..state import Message, PendingInterrupt, State
from ._aisdk import send_kwargs
from ._bodies import body_conversation_id, check_request_opts
from ._display import displayed
from ._errors import HTTPError, not_found
from ._interrupts import Decision, ToolCall, interrupt_calls, resume_answer
from ._streaming import ChunkStream, Step, follow_turn, reply_text, resubscribing
from ._tools import ToolCallEvent, ToolLedger, ToolResultEvent, tool_event

if TYPE_CHECKING:
    from ._app import _Api

__all__ = ["ag_ui_routes"]

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
_RunOutcome = Literal["success", "cancelled"]


def ag_ui_routes(api: _Api, path: str = "/ag-ui") -> list[Route]:
    """The AG-UI route, served by ``api``."""
    endpoint = _AGUI(api)
    return [Route(path, api.wrap(endpoint.run), methods=["POST"])]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text"
        )
    return ""


def _user_content(message: UserMessage) -> str | list[dict[str, Any]]:
    content = message.content
    if isinstance(content, str):
        if not content:
            raise HTTPError(400, "ValidationError", "the newest user message is empty")
        return content
    parts = [p.model_dump(mode="json", by_alias=True, exclude_none=True) for p in content]
    if not parts:
        raise HTTPError(400, "ValidationError", "the newest user message has no content part")
    if all(p.get("type") == "text" for p in parts):
        return "".join(str(p.get("text", "")) for p in parts)
    return parts


def _tool_text(message: ToolMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    return _text_of([p.model_dump(mode="json") for p in message.content])


class ReplyIds:
    """The ids the stream gives assistant text, so that a later snapshot names them the same.

    A reply's id is only made when its turn ends, after its text has streamed;
    so both the stream and ``history_messages`` name the n-th assistant message
    after a user message ``"<user message id>-reply"`` (``-reply-2``, ... for
    the later ones, e.g. the answer after an approval). The client's merge of
    ``MESSAGES_SNAPSHOT`` keeps messages whose ids it knows in place.
    """

    def __init__(self) -> None:
        self.base: str | None = None
        self.count = 0

    def user(self, message_id: str) -> None:
        self.base, self.count = message_id, 0

    def peek(self, fallback: str) -> str:
        """The id of the assistant message being written now."""
        if self.base is None:
            return fallback
        n = self.count + 1
        return f"{self.base}-reply" if n == 1 else f"{self.base}-reply-{n}"

    def assistant(self, fallback: str) -> str:
        """The id of an assistant message that was just appended (and count it)."""
        name = self.peek(fallback)
        self.count += 1
        return name

    def follow(self, messages: list[Message]) -> None:
        for message in messages:
            if message.role == "user":
                self.user(message.id)
            elif message.role == "assistant":
                self.assistant(message.id)


def history_messages(state: State, upto: str | None = None) -> list[AGUIMessage]:
    """The stored history as AG-UI messages (tool messages without a call id are left out).

    With ``upto``, the history ends at that message: what the run then streams
    (the reply to it) must not be in the snapshot already, or the client would
    show it twice.
    """
    out: list[AGUIMessage] = []
    ids = ReplyIds()
    everything = [*state.messages, *state.queued]
    if upto is not None and any(m.id == upto for m in everything):
        everything = everything[: next(i for i, m in enumerate(everything) if m.id == upto) + 1]
    for message in everything:
        shown = displayed(message)
        if message.role == "user":
            ids.user(message.id)
            out.append(UserMessage(id=message.id, content=_text_of(shown.content)))
        elif message.role == "assistant":
            out.append(
                AssistantMessage(id=ids.assistant(message.id), content=_text_of(shown.content))
            )
        elif message.role == "system":
            out.append(SystemMessage(id=message.id, content=_text_of(shown.content)))
    return out


def _decisions(entries: list[ResumeEntry], calls: list[ToolCall]) -> list[Decision]:
    """The answers of a ``resume`` list.

    An entry names a call by the interrupt id the run finished with
    (``ToolCall.answer_id``); one that names an agent's call by its tool call
    id alone (as a client of an older server does) answers the pending
    interrupt. Any other id is kept as it is, for ``resume_answer`` to refuse
    (409): it answers an interrupt that is no longer pending.
    """
    by_answer = {c.answer_id: c for c in calls}
    by_call = {c.id: c for c in calls if c.native}
    decisions: list[Decision] = []
    for entry in entries:
        call = by_answer.get(entry.interrupt_id) or by_call.get(entry.interrupt_id)
        one = functools.partial(
            Decision,
            call.id if call is not None else entry.interrupt_id,
            answer_id=entry.interrupt_id if entry.interrupt_id in by_answer else None,
        )
        cancelled = entry.status == "cancelled"
        payload = entry.payload
        if call is None or call.kind == "approval":
            if cancelled:
                decisions.append(one(approved=False, reason="cancelled"))
            elif isinstance(payload, bool):
                decisions.append(one(approved=payload))
            elif isinstance(payload, Mapping) and isinstance(payload.get("approved"), bool):
                reason = payload.get("reason")
                decisions.append(
                    one(
                        approved=payload["approved"],
                        reason=reason if isinstance(reason, str) else None,
                    )
                )
            elif call is None or not call.native:
                # A plain interrupt's question: the payload is the answer itself
                # (an id nothing waits on: resume_answer refuses it, 409).
                decisions.append(one(output=payload))
            else:
                raise HTTPError(
                    400,
                    "ValidationError",
                    f"resume entry {entry.interrupt_id!r} approves a tool call: its payload "
                    'must be true/false or {"approved": bool, "reason": str}',
                )
        elif cancelled:
            decisions.append(one(error="cancelled by the user"))
        else:
            decisions.append(one(output=payload))
    return decisions


class _Translator:
    """Sessionvisor events of one turn -> AG-UI events (closing whatever it opened)."""

    def __init__(
        self,
        *,
        thread_id: str,
        run_id: str,
        decisions: list[Decision] | None,
        history: list[Message] | None = None,
    ) -> None:
        self.ids = ReplyIds()
        self.ids.follow(history or [])
        self.thread_id = thread_id
        self.run_id = run_id
        self.finished = False
        self.text_id: str | None = None
        self.streamed = False
        self.sent = ""  # the text streamed of the reply being written
        self.gapped = False  # events were lost: the rest of the reply comes from its message
        self.tools = ToolLedger()
        # The client holds the calls it answered from the last run.
        self.denied = self.tools.take_decisions(decisions or [])

    def custom(self, event: Event) -> CustomEvent:
        return CustomEvent(name=f"sessionvisor.{event.event_type}", value=event.to_json())

    def _close_text(self) -> Iterator[BaseEvent]:
        if self.text_id is not None:
            yield TextMessageEndEvent(message_id=self.text_id)
            self.text_id = None

    def _text(self, message_id: str, text: str) -> Iterator[BaseEvent]:
        if not text:
            return
        if self.text_id is None:
            self.text_id = message_id
            yield TextMessageStartEvent(message_id=message_id, role="assistant")
        self.sent += text
        yield TextMessageContentEvent(message_id=self.text_id, delta=text)

    def _rest_of_reply(self, message_id: str, full: str) -> Iterator[BaseEvent]:
        """After lost events: the part of the stored reply the client has not seen."""
        if full.startswith(self.sent):
            yield from self._text(message_id, full[len(self.sent) :])
        self.gapped = False

    def recovered(self, reply: str) -> Iterator[BaseEvent]:
        """The turn ended in lost events: finish its text from the stored reply."""
        if self.gapped:
            yield from self._rest_of_reply(self.ids.peek(f"msg-{self.run_id}"), reply)
            yield from self._close_text()

    def _tool_call(self, call_id: str, name: str, args: Any) -> Iterator[BaseEvent]:
        if not self.tools.announce(call_id):
            return
        yield from self._close_text()
        yield ToolCallStartEvent(tool_call_id=call_id, tool_call_name=name)
        yield ToolCallArgsEvent(
            tool_call_id=call_id,
            delta=json.dumps(args if args is not None else {}, ensure_ascii=False, default=str),
        )
        yield ToolCallEndEvent(tool_call_id=call_id)

    def _tool_result(self, call_id: str, content: Any) -> Iterator[BaseEvent]:
        if self.tools.answer(call_id):
            yield from self._result(call_id, content)

    def _result(self, call_id: str, content: Any) -> Iterator[BaseEvent]:
        yield from self._close_text()
        text = content if isinstance(content, str) else json.dumps(content, default=str)
        yield ToolCallResultEvent(
            message_id=f"result-{call_id}", tool_call_id=call_id, content=text, role="tool"
        )

    def start(self) -> Iterator[BaseEvent]:
        for call_id in self.denied:
            yield from self._result(call_id, {"approved": False})

    def _finish(self, outcome: _RunOutcome = "success") -> Iterator[BaseEvent]:
        yield from self._close_text()
        for call_id in self.tools.drain_awaiting():
            yield from self._tool_result(call_id, {"approved": True})
        yield RunFinishedEvent.model_validate(
            {
                "threadId": self.thread_id,
                "runId": self.run_id,
                **({"outcome": {"type": "cancelled"}} if outcome == "cancelled" else {}),
            }
        )
        self.finished = True

    def _interrupted(self, interrupt: PendingInterrupt | None) -> Iterator[BaseEvent]:
        yield from self._close_text()
        calls = interrupt_calls(interrupt)
        if not calls:
            yield from self._finish()
            return
        for call in calls:
            yield from self._tool_call(call.id, call.name, call.args)
        interrupts = [
            Interrupt(
                id=call.answer_id,
                reason="tool_approval" if call.kind == "approval" else "tool_result",
                message=call.question,
                tool_call_id=call.id,
                metadata={"sessionvisor": {"kind": call.kind, "tool_name": call.name}},
            )
            for call in calls
        ]
        yield RunFinishedEvent.model_validate(
            {
                "threadId": self.thread_id,
                "runId": self.run_id,
                "outcome": {
                    "type": "interrupt",
                    "interrupts": [
                        i.model_dump(mode="json", by_alias=True, exclude_none=True)
                        for i in interrupts
                    ],
                },
            }
        )
        self.finished = True

    def feed(self, step: Step, event: Event) -> Iterator[BaseEvent]:
        if step == "wait" and isinstance(event, Delta | MessageAppended | AgentEvent):
            return  # another turn's reply (the one this queued message waits behind)
        if step in ("wait", "start"):
            if step == "start" and isinstance(event, MessageAppended):
                self.ids.user(event.message.id)  # a queued message's turn starts with it
            if step == "start" and isinstance(event, StatusChanged) and event.gap:
                self.gapped = True
            yield self.custom(event)
            return
        if step == "next":
            yield from self._finish()
            return
        if step == "end":
            yield from self._end(event)
            return
        if isinstance(event, Delta):
            self.streamed = True
            if not self.gapped:
                yield from self._text(self.ids.peek(f"msg-{event.seq}"), event.text)
        elif isinstance(event, MessageAppended):
            message = event.message
            if message.role == "user":
                self.ids.user(message.id)
                yield self.custom(event)
            elif message.role == "assistant":
                name = self.ids.assistant(message.id)
                if self.gapped:
                    yield from self._rest_of_reply(name, message.text())
                elif not self.streamed:
                    yield from self._text(name, message.text())
                self.streamed, self.sent = False, ""
                yield from self._close_text()
            elif message.role == "tool" and (call_id := self.tools.next_awaiting()) is not None:
                yield from self._tool_result(call_id, message.text())
            else:
                yield self.custom(event)
        elif isinstance(event, AgentEvent):
            yield from self._agent_event(event)
        else:
            if isinstance(event, StatusChanged) and event.gap:
                # Some deltas were lost: hold the text until the reply's message comes.
                yield from self._close_text()
                self.gapped = True
            yield self.custom(event)

    def _agent_event(self, event: AgentEvent) -> Iterator[BaseEvent]:
        tool = tool_event(event)
        if isinstance(tool, ToolCallEvent):
            yield from self._tool_call(tool.call_id, tool.name, tool.args)
        elif isinstance(tool, ToolResultEvent):
            yield from self._tool_call(tool.call_id, tool.name, {})
            self.tools.returned(tool.call_id)
            yield from self._tool_result(tool.call_id, tool.content)
        else:
            yield self.custom(event)

    def _end(self, event: Event) -> Iterator[BaseEvent]:
        yield self.custom(event)
        if isinstance(event, StatusChanged):
            if event.status is Status.ERROR:
                yield from self._close_text()
                yield RunErrorEvent(message=event.error or "the turn failed", code="turn_failed")
                self.finished = True
            elif event.status is Status.INTERRUPTED:
                yield from self._interrupted(event.interrupt)
            elif event.status in (Status.CANCELLED, Status.NOT_RUNNING):
                yield from self._finish("cancelled")
            else:
                yield from self._finish()
            return
        if isinstance(event, SessionFailed):
            yield from self._close_text()
            yield RunErrorEvent(
                message=f"the session gave up: {event.error}", code="session_failed"
            )
            self.finished = True
            return
        if isinstance(event, Shutdown):
            yield from self._finish("cancelled")
            return
        yield from self._finish()

    def close(self) -> Iterator[BaseEvent]:
        if not self.finished:
            yield from self._finish("cancelled")


class _AGUI:
    def __init__(self, api: _Api) -> None:
        self.api = api
        self.sup = api.supervisor
        self.encoder = EventEncoder()

    async def run(self, request: Request) -> Response:
        """``POST /ag-ui``: send the newest user message (or resume) and stream the run."""
        scope = await self.api.scope(request)
        body = await self.api.body(request, RunAgentInput)
        cid = body_conversation_id(request, body.thread_id)
        self.api.streams.admit()
        exists = await self.sup.check_access(cid, scope=scope)
        decisions: list[Decision] | None = None
        answer: Any = None
        answering: str | None = None  # the id of the interrupt the answer is for
        content: Any = None
        history: list[Message] = []
        before: State | None = None
        newest = body.messages[-1] if body.messages else None
        tool_answer = isinstance(newest, ToolMessage) and not body.resume
        if body.resume or tool_answer:
            if not exists:
                raise not_found(cid)
            state = await self.sup.load(cid, scope=scope)
            interrupt = state.interrupt if state is not None else None
            history = list(state.messages) if state is not None else []
            before = state  # the snapshot: the history before the answer's turn runs
            calls = interrupt_calls(interrupt)
            if body.resume:
                decisions = _decisions(body.resume, calls)
            else:
                assert isinstance(newest, ToolMessage)
                decisions = [Decision(newest.tool_call_id, output=_tool_text(newest))]
            answer = resume_answer(cid, interrupt, decisions)
            assert interrupt is not None  # resume_answer refuses an answer to nothing
            answering = interrupt.id
        elif isinstance(newest, UserMessage):
            content = _user_content(newest)
        else:
            raise HTTPError(
                400,
                "ValidationError",
                "the run needs a newest message from the user, or a resume list answering "
                "the pending interrupt",
            )
        request_opts = _request_opts(body.forwarded_props)

        stack = AsyncExitStack()
        try:
            subscription = await stack.enter_async_context(self.sup.subscribe(cid, scope=scope))
            events = aiter(subscription)
            await anext(events)  # the snapshot: what comes next is new
            mode: Literal["started", "queued", "running"] = "started"
            answered = False  # a retried send whose turn already ran
            if decisions is None:
                # The send wakes the session, after its checks (content size, owner).
                delivery = await self.sup.send(
                    cid,
                    content,
                    scope=scope,
                    request_opts=request_opts,
                    **send_kwargs(self.sup, newest.id if newest is not None else None),
                )
                mode = "queued" if delivery.queued else "started"
                if getattr(delivery, "duplicate", False):
                    # A retry of an accepted send: follow what still runs, if anything.
                    running = await self.sup.status(cid, scope=scope) is Status.RUNNING
                    mode, answered = "running", not running
            else:
                await self.sup.resume(
                    cid, answer, scope=scope, request_opts=request_opts, interrupt_id=answering
                )
            snapshot = before
            if decisions is None and exists:
                snapshot = await self.sup.load(cid, scope=scope)
        except BaseException:
            await stack.aclose()
            raise
        translator = _Translator(
            thread_id=cid, run_id=body.run_id, decisions=decisions, history=history
        )
        steps = follow_turn(
            resubscribing(self.sup, cid, scope=scope, stack=stack, events=events),
            mode=mode,
            queued_content=content,
        )
        asked = newest.id if decisions is None and newest is not None else None
        upto = None if answered else asked
        encoder = self.encoder

        async def chunks() -> AsyncIterator[bytes]:
            try:
                yield encoder.encode(RunStartedEvent(thread_id=cid, run_id=body.run_id)).encode()
                if snapshot is not None:
                    yield encoder.encode(
                        MessagesSnapshotEvent(messages=history_messages(snapshot, upto))
                    ).encode()
                for opening in translator.start():
                    yield encoder.encode(opening).encode()
                if answered:
                    interrupt = snapshot.interrupt if snapshot is not None else None
                    for out in translator._interrupted(interrupt):
                        yield encoder.encode(out).encode()
                    return
                async for step, event in steps:
                    if step == "end" and isinstance(event, StatusChanged) and event.gap:
                        translator.gapped = True  # the turn ended in the events that were lost
                    if step == "end" and translator.gapped:
                        for out in translator.recovered(
                            await reply_text(self.sup, cid, scope=scope, user_message_id=asked)
                        ):
                            yield encoder.encode(out).encode()
                    for out in translator.feed(step, event):
                        yield encoder.encode(out).encode()
                    if translator.finished:
                        break
                for out in translator.close():
                    yield encoder.encode(out).encode()
            finally:
                await steps.aclose()

        return ChunkStream(  # type: ignore[return-value]  # an ASGI response, as Response is
            chunks(),
            headers=_HEADERS,
            registry=self.api.streams,
            heartbeat=self.api.heartbeat,
            cleanup=stack.aclose,
            log_context={"conversation_id": cid, "protocol": "ag-ui"},
        )


def _request_opts(forwarded: Any) -> dict[str, Any]:
    """``forwardedProps.request_opts``: the client's route options (never the scope)."""
    if not isinstance(forwarded, Mapping):
        return {}
    opts = forwarded.get("request_opts")
    if opts is None:
        return {}
    if not isinstance(opts, Mapping):
        raise HTTPError(400, "ValidationError", "forwardedProps.request_opts must be an object")
    try:
        return check_request_opts(opts)
    except ValueError as exc:
        raise HTTPError(400, "ValidationError", str(exc)) from None
