"""The Vercel AI SDK's UI message stream (protocol v1), on top of the supervisor.

``POST /ai-sdk/chat`` takes the body ``useChat``'s ``DefaultChatTransport``
sends (``id`` = the conversation id, ``messages``, ``trigger``, ``messageId``)
and answers with one turn's stream. Only the newest message of the client's
copy matters: a user message is *sent* into the conversation (the stored
history, not the client's, is what the agent sees); an assistant message whose
tool parts carry an approval response (``addToolApprovalResponse``) or a tool
output (``addToolOutput``) for the pending interrupt is a *resume*. The
``approvalId`` of an approval request names the interrupt (``ToolCall.answer_id``
in ``_interrupts``): an approval response naming an interrupt that is no longer
pending is a 409, so a retried or replayed approval never answers a later
question, even an identical one. ``regenerate()`` (``trigger:
"regenerate-message"``) answers the newest user message again, and
``sendMessage({text, messageId})`` on a user message (the body's ``messageId``
is the newest message's id) edits it; both supersede the old answer (see
``SessionSupervisor.regenerate``/``edit``) and stream the new turn, and are
a 409 while a turn runs. A message sent while a turn runs is queued,
and its stream carries the turn that answers it. ``GET
/ai-sdk/chat/{id}/stream`` replays the running turn from its start and follows
it (204 when no turn runs): that is ``resumeStream()``.

Chunks: ``start``, ``start-step``, ``text-start``/``text-delta``/``text-end``,
``tool-input-available``, ``tool-output-available``/``tool-output-denied``,
``tool-approval-request`` (a pending interrupt), ``finish-step``, ``finish``,
``error`` (a failed turn), and transient ``data-*`` parts for what the SDK has
no chunk for: ``data-status``, ``data-queued``, ``data-restarted``,
``data-session-failed``, ``data-shutdown``, ``data-agent-event``,
``data-message``. Then ``[DONE]``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._errors import AccessDenied, UnknownMessage
from ..sessions import (
    AgentEvent,
    Delta,
    Event,
    MessageAppended,
    MessageQueued,
    Restarted,
    SessionFailed,
    SessionSupervisor,
    Shutdown,
    Status,
    StatusChanged,
)
from ._bodies import (
    MAX_MESSAGE_ID_LENGTH,
    body_conversation_id,
    check_conversation_id,
    check_request_opts,
    message_id_ok,
)
from ._errors import HTTPError, not_found
from ._interrupts import Decision, ToolCall, interrupt_calls, resume_answer
from ._rewrites import unknown_message
from ._sse import access_as_unknown_would, read_as_unknown_would
from ._streaming import (
    ChunkStream,
    Step,
    follow_turn,
    replay_then_follow,
    reply_text,
    resubscribing,
    turn_start_index,
)
from ._tools import ToolCallEvent, ToolLedger, ToolResultEvent, tool_event

if TYPE_CHECKING:
    from ._app import _Api

__all__ = ["STREAM_HEADERS", "ai_sdk_routes"]

#: The response headers of a UI message stream.
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
    (b"x-vercel-ai-ui-message-stream", b"v1"),
]
_DONE = b"data: [DONE]\n\n"
_TOOL_STATES_ANSWERED = ("approval-responded", "output-available", "output-error")


class UIMessage(BaseModel):
    """One message of the client's copy (only the newest one is read)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=256)
    role: Literal["user", "assistant", "system"]
    parts: list[dict[str, Any]]


class ChatBody(BaseModel):
    """The ``useChat`` request body (extra keys from the transport's ``body`` are ignored)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    messages: list[UIMessage] = Field(min_length=1)
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: str | None = None
    request_opts: dict[str, Any] = Field(default_factory=dict)

    @field_validator("request_opts")
    @classmethod
    def _no_trusted_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_request_opts(value)


def ai_sdk_routes(api: _Api, prefix: str = "/ai-sdk/chat") -> list[Route]:
    """The routes of the UI message stream protocol, served by ``api``."""
    endpoints = _AISDK(api)
    return [
        Route(prefix, api.wrap(endpoints.chat), methods=["POST"]),
        Route(prefix + "/{cid}/stream", api.wrap(endpoints.resume_stream), methods=["GET"]),
    ]


def send_kwargs(supervisor: SessionSupervisor, message_id: str | None) -> dict[str, Any]:
    """``message_id=`` for ``send`` when this supervisor takes a client message id.

    Raises:
        HTTPError: 400 when the id is one ``send`` would refuse (empty, over 128
            characters, a control character), instead of a 500 from deeper down.
    """
    if message_id is None:
        return {}
    if not message_id_ok(message_id):
        raise HTTPError(
            400,
            "ValidationError",
            f"a message id must be 1 to {MAX_MESSAGE_ID_LENGTH} characters long, "
            "without control characters",
        )
    try:
        params = inspect.signature(supervisor.send).parameters
    except (TypeError, ValueError):
        return {}
    return {"message_id": message_id} if "message_id" in params else {}


def _user_content(message: UIMessage) -> str | list[dict[str, Any]]:
    texts: list[str] = []
    parts: list[dict[str, Any]] = []
    for part in message.parts:
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "file" and isinstance(part.get("url"), str):
            file_part = {"type": "file", "url": part["url"]}
            for key in ("mediaType", "filename"):
                if isinstance(part.get(key), str):
                    file_part[key] = part[key]
            parts.append(file_part)
    if not parts:
        raise HTTPError(400, "ValidationError", "the newest user message has no text or file part")
    if len(parts) == len(texts):
        return "".join(texts)
    return parts


def _decisions(message: UIMessage, calls: list[ToolCall]) -> list[Decision]:
    """The answers the assistant message's tool parts carry for the pending calls."""
    pending = {c.id for c in calls}
    found: list[Decision] = []
    stray: list[Decision] = []
    for part in message.parts:
        kind = part.get("type")
        if not isinstance(kind, str) or not (kind.startswith("tool-") or kind == "dynamic-tool"):
            continue
        call_id = part.get("toolCallId")
        state = part.get("state")
        if not isinstance(call_id, str) or state not in _TOOL_STATES_ANSWERED:
            continue
        if state == "approval-responded":
            approval = part.get("approval")
            if not isinstance(approval, Mapping) or not isinstance(approval.get("approved"), bool):
                raise HTTPError(
                    400,
                    "ValidationError",
                    f"tool part {call_id!r} is approval-responded without approval.approved",
                )
            reason = approval.get("reason")
            named = approval.get("id")
            decision = Decision(
                call_id,
                approved=approval["approved"],
                reason=reason if isinstance(reason, str) else None,
                # An approval id that is the call's own id names no interrupt (older streams).
                answer_id=named if isinstance(named, str) and named != call_id else None,
            )
        elif state == "output-error":
            decision = Decision(call_id, error=str(part.get("errorText") or "tool failed"))
        else:
            decision = Decision(call_id, output=part.get("output"))
        if call_id in pending:
            found.append(decision)
        elif state == "approval-responded":
            stray.append(decision)
    return found or stray


def _chunk(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _status_data(event: StatusChanged) -> dict[str, Any]:
    data: dict[str, Any] = {"status": event.status.value}
    if event.error is not None:
        data["error"] = event.error
    if event.interrupt is not None:
        data["interrupt"] = event.interrupt.model_dump(mode="json")
    return data


class _Translator:
    """Sessionvisor events of one turn -> UI message chunks (a valid stream whatever comes)."""

    def __init__(
        self,
        *,
        message_id: str | None,
        decisions: list[Decision] | None = None,
    ) -> None:
        self.message_id = message_id
        self.started = False
        self.finished = False
        self.text_id: str | None = None
        self.streamed = False  # text streamed since the last assistant message
        self.sent = ""  # ... and what it was
        self.gapped = False  # events were lost: the rest of the reply comes from its message
        self.tools = ToolLedger()
        self.decisions = decisions or []

    # -- helpers -----------------------------------------------------------------------

    def _close_text(self) -> Iterator[dict[str, Any]]:
        if self.text_id is not None:
            yield {"type": "text-end", "id": self.text_id}
            self.text_id = None

    def _text(self, seq: int, text: str) -> Iterator[dict[str, Any]]:
        if not text:
            return
        if self.text_id is None:
            self.text_id = f"text-{seq}"
            yield {"type": "text-start", "id": self.text_id}
        self.sent += text
        yield {"type": "text-delta", "id": self.text_id, "delta": text}

    def _rest_of_reply(self, seq: int, full: str) -> Iterator[dict[str, Any]]:
        """After lost events: the part of the stored reply the client has not seen."""
        if full.startswith(self.sent):
            yield from self._text(seq, full[len(self.sent) :])
        self.gapped = False

    def recovered(self, reply: str) -> Iterator[dict[str, Any]]:
        """The turn ended in lost events: finish its text from the stored reply."""
        if self.gapped:
            yield from self._start()
            yield from self._rest_of_reply(0, reply)

    def _tool_input(
        self, call_id: str, name: str, args: Any, title: str | None = None
    ) -> Iterator[dict[str, Any]]:
        if not self.tools.announce(call_id):
            return
        yield from self._close_text()
        chunk: dict[str, Any] = {
            "type": "tool-input-available",
            "toolCallId": call_id,
            "toolName": name,
            "input": args if args is not None else {},
        }
        if title:
            chunk["title"] = title
        yield chunk

    def _tool_output(self, call_id: str, output: Any) -> Iterator[dict[str, Any]]:
        if not self.tools.answer(call_id):
            return
        yield from self._close_text()
        yield {"type": "tool-output-available", "toolCallId": call_id, "output": output}

    def _transient(self, name: str, data: Any) -> dict[str, Any]:
        return {"type": f"data-{name}", "data": data, "transient": True}

    def _start(self) -> Iterator[dict[str, Any]]:
        if self.started:
            return
        self.started = True
        chunk: dict[str, Any] = {"type": "start"}
        if self.message_id is not None:
            chunk["messageId"] = self.message_id
        yield chunk
        yield {"type": "start-step"}
        # An approval answered: the client holds those tool parts already.
        for call_id in self.tools.take_decisions(self.decisions):
            yield {"type": "tool-output-denied", "toolCallId": call_id}

    def _finish(self, reason: str) -> Iterator[dict[str, Any]]:
        yield from self._close_text()
        if self.started:
            # Approved calls whose tool left no message of its own: the approval is the result.
            for call_id in self.tools.drain_awaiting():
                yield from self._tool_output(call_id, {"approved": True})
            yield {"type": "finish-step"}
        yield {"type": "finish", "finishReason": reason}
        self.finished = True

    # -- events ------------------------------------------------------------------------

    def feed(self, step: Step, event: Event) -> Iterator[dict[str, Any]]:
        if step == "wait":
            yield from self._news(event)
            if isinstance(event, StatusChanged):
                yield self._transient("status", _status_data(event))
            return
        if step == "start":
            if self.message_id is not None and self.message_id.startswith("turn-"):
                self.message_id = f"turn-{event.seq}"
            if isinstance(event, StatusChanged) and event.gap:
                self.gapped = True
            yield from self._start()
            if isinstance(event, StatusChanged):
                yield self._transient("status", _status_data(event))
            return
        if step == "next":
            yield from self._finish("stop")
            return
        if step == "end":
            yield from self._end(event)
            return
        yield from self._event(event)

    def _news(self, event: Event) -> Iterator[dict[str, Any]]:
        """Transient parts for what happens around the turn."""
        if isinstance(event, MessageQueued):
            yield self._transient(
                "queued",
                {
                    "id": event.message.id,
                    "content": event.message.model_dump(mode="json")["content"],
                },
            )
        elif isinstance(event, Restarted):
            yield self._transient("restarted", {"attempt": event.attempt, "error": event.error})

    def _event(self, event: Event) -> Iterator[dict[str, Any]]:
        yield from self._start()
        if isinstance(event, Delta):
            self.streamed = True
            if not self.gapped:
                yield from self._text(event.seq, event.text)
        elif isinstance(event, MessageAppended):
            message = event.message
            if message.role == "assistant":
                if self.gapped:
                    yield from self._rest_of_reply(event.seq, message.text())
                elif not self.streamed:
                    yield from self._text(event.seq, message.text())
                self.streamed, self.sent = False, ""
                yield from self._close_text()
            elif message.role == "tool" and (call_id := self.tools.next_awaiting()) is not None:
                yield from self._tool_output(call_id, message.model_dump(mode="json")["content"])
            elif message.role in ("tool", "system"):
                yield self._transient(
                    "message",
                    {"role": message.role, "content": message.model_dump(mode="json")["content"]},
                )
        elif isinstance(event, AgentEvent):
            yield from self._agent_event(event)
        elif isinstance(event, StatusChanged):
            if event.gap:
                # Some deltas were lost: hold the text until the reply's message comes.
                yield from self._close_text()
                self.gapped = True
            yield self._transient("status", _status_data(event))
        else:
            yield from self._news(event)

    def _agent_event(self, event: AgentEvent) -> Iterator[dict[str, Any]]:
        tool = tool_event(event)
        if isinstance(tool, ToolCallEvent):
            yield from self._tool_input(tool.call_id, tool.name, tool.args)
            return
        if isinstance(tool, ToolResultEvent):
            yield from self._tool_input(tool.call_id, tool.name, {})
            self.tools.returned(tool.call_id)
            yield from self._tool_output(tool.call_id, tool.content)
            return
        yield self._transient("agent-event", {"name": event.name, "data": event.data})

    def _end(self, event: Event) -> Iterator[dict[str, Any]]:
        if isinstance(event, StatusChanged):
            status = event.status
            if not self.started:
                # A queued message's turn did not come (the queue is held).
                yield self._transient("status", _status_data(event))
                yield from self._finish("other")
                return
            if status is Status.ERROR:
                yield from self._close_text()
                yield self._transient("status", _status_data(event))
                yield {"type": "error", "errorText": event.error or "the turn failed"}
                self.finished = True
                return
            yield from self._start()
            yield self._transient("status", _status_data(event))
            if status is Status.INTERRUPTED:
                calls = interrupt_calls(event.interrupt)
                for call in calls:
                    yield from self._tool_input(call.id, call.name, call.args, call.question)
                    if call.kind == "approval":
                        yield {
                            "type": "tool-approval-request",
                            "approvalId": call.answer_id,
                            "toolCallId": call.id,
                        }
                yield from self._finish("tool-calls" if calls else "other")
                return
            yield from self._finish("stop" if status is Status.IDLE else "other")
            return
        if isinstance(event, SessionFailed):
            yield from self._close_text()
            yield self._transient("session-failed", {"error": event.error})
            yield {"type": "error", "errorText": f"the session gave up: {event.error}"}
            self.finished = True
            return
        if isinstance(event, Shutdown):
            yield self._transient(
                "shutdown", {"reason": event.reason, "status": event.status.value}
            )
        yield from self._finish("other")

    def close(self) -> Iterator[dict[str, Any]]:
        if not self.finished:
            yield from self._finish("other")


async def _encode(
    steps: AsyncIterator[tuple[Step, Event]],
    translator: _Translator,
    recover: Callable[[], Awaitable[str]] | None = None,
) -> AsyncIterator[bytes]:
    try:
        async for step, event in steps:
            if step == "end" and isinstance(event, StatusChanged) and event.gap:
                translator.gapped = True  # the turn ended in the events that were lost
            if step == "end" and translator.gapped and recover is not None:
                for chunk in translator.recovered(await recover()):
                    yield _chunk(chunk)
            for chunk in translator.feed(step, event):
                yield _chunk(chunk)
        for chunk in translator.close():
            yield _chunk(chunk)
        yield _DONE
    finally:
        aclose = getattr(steps, "aclose", None)
        if aclose is not None:
            await aclose()


def _rewrite_of(body: ChatBody) -> Literal["regenerate", "edit"] | None:
    """Whether the request regenerates (``regenerate()``) or edits (``sendMessage`` with
    the ``messageId`` of the user message it replaces, which is the newest message)."""
    newest = body.messages[-1]
    if body.trigger == "regenerate-message":
        if newest.role != "user":
            raise HTTPError(
                400,
                "ValidationError",
                "a regenerate must end with the user message to answer again",
            )
        return "regenerate"
    if body.messageId is not None and newest.role == "user" and newest.id == body.messageId:
        return "edit"
    return None


async def _rewrite(
    sup: SessionSupervisor,
    cid: str,
    rewrite: Literal["regenerate", "edit"],
    newest: UIMessage,
    content: Any,
    *,
    scope: Any,
) -> str:
    """Regenerate or edit the newest message (the client's id, which names the stored
    message, or the one that replaced it); the id of the message asked again."""
    try:
        if rewrite == "regenerate":
            return await sup.regenerate(cid, message_id=newest.id, scope=scope)
        return await sup.edit(cid, newest.id, content, scope=scope)
    except UnknownMessage as exc:
        raise unknown_message(exc) from None


class _AISDK:
    def __init__(self, api: _Api) -> None:
        self.api = api
        self.sup = api.supervisor

    def _respond(self, chunks: AsyncIterator[bytes], stack: AsyncExitStack, cid: str) -> Response:
        return ChunkStream(  # type: ignore[return-value]  # an ASGI response, as Response is
            chunks,
            headers=STREAM_HEADERS,
            registry=self.api.streams,
            heartbeat=self.api.heartbeat,
            cleanup=stack.aclose,
            log_context={"conversation_id": cid, "protocol": "ai-sdk"},
        )

    async def chat(self, request: Request) -> Response:
        """``POST /ai-sdk/chat``: send (or answer an approval) and stream the turn."""
        scope = await self.api.scope(request)
        body = await self.api.body(request, ChatBody)
        cid = body_conversation_id(request, body.id)
        self.api.streams.admit()
        newest = body.messages[-1]
        rewrite = _rewrite_of(body)
        exists = await self.sup.check_access(cid, scope=scope)
        decisions: list[Decision] | None = None
        answer: Any = None
        answering: str | None = None  # the id of the interrupt the answer is for
        content: Any = None
        if newest.role == "user":
            content = _user_content(newest)
        elif newest.role == "assistant":
            if not exists:
                raise not_found(cid)
            state = await self.sup.load(cid, scope=scope)
            interrupt = state.interrupt if state is not None else None
            decisions = _decisions(newest, interrupt_calls(interrupt))
            if not decisions:
                raise HTTPError(
                    400,
                    "ValidationError",
                    "the newest message is an assistant message that answers no tool call; "
                    "send a user message, or an approval response (addToolApprovalResponse)",
                )
            answer = resume_answer(cid, interrupt, decisions)
            assert interrupt is not None  # resume_answer refuses an answer to nothing
            answering = interrupt.id
        else:
            raise HTTPError(400, "ValidationError", "the newest message must be a user message")
        if rewrite is not None and not exists:
            raise not_found(cid)

        stack = AsyncExitStack()
        try:
            subscription = await stack.enter_async_context(self.sup.subscribe(cid, scope=scope))
            events = aiter(subscription)
            await anext(events)  # the snapshot: what comes next is new
            mode: Literal["started", "queued"] = "started"
            if rewrite is not None:
                # A regenerate or an edit: it starts its turn at once (409 while one runs).
                asked_again = await _rewrite(self.sup, cid, rewrite, newest, content, scope=scope)
            elif decisions is None:
                # The send wakes the session, after its checks (content size, owner).
                delivery = await self.sup.send(
                    cid,
                    content,
                    scope=scope,
                    request_opts=body.request_opts,
                    **send_kwargs(self.sup, newest.id),
                )
                if getattr(delivery, "duplicate", False):
                    # A retry of a send that was accepted: nothing new will run for it.
                    await stack.aclose()
                    return await self._duplicate(cid, scope, newest.id)
                mode = "queued" if delivery.queued else "started"
            else:
                await self.sup.resume(
                    cid,
                    answer,
                    scope=scope,
                    request_opts=body.request_opts,
                    interrupt_id=answering,
                )
        except BaseException:
            await stack.aclose()
            raise
        translator = _Translator(
            # An approval continues the client's assistant message: keep its id.
            message_id=None if decisions is not None else "turn-",
            decisions=decisions,
        )
        steps = follow_turn(
            resubscribing(self.sup, cid, scope=scope, stack=stack, events=events),
            mode=mode,
            queued_content=content,
        )
        asked = newest.id if decisions is None else None
        if rewrite is not None:
            asked = asked_again

        async def recover() -> str:
            return await reply_text(self.sup, cid, scope=scope, user_message_id=asked)

        return self._respond(_encode(steps, translator, recover), stack, cid)

    async def _duplicate(self, cid: str, scope: Any, message_id: str) -> Response:
        """The answer to a retried send: the running turn, or the reply it already got."""
        if await self.sup.status(cid, scope=scope) is Status.RUNNING:
            replay = await self._replay(cid, scope)
            if replay.status_code != 204:
                return replay
        state = await self.sup.load(cid, scope=scope)
        reply: list[str] = []
        seen = False
        for message in state.messages if state is not None else []:
            if message.role == "user":
                if seen:
                    break
                seen = message.id == message_id
            elif seen and message.role == "assistant":
                reply.append(message.text())
        translator = _Translator(message_id=f"reply-{message_id}")
        out = list(translator._start())
        out.extend(translator._text(0, "\n\n".join(r for r in reply if r)))
        out.extend(translator._finish("stop"))

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in out:
                yield _chunk(chunk)
            yield _DONE

        return self._respond(chunks(), AsyncExitStack(), cid)

    async def resume_stream(self, request: Request) -> Response:
        """``GET /ai-sdk/chat/{id}/stream``: the running turn from its start, or 204.

        Another owner's conversation answers 204, as an unknown id does (and in
        the same time): a 404 would tell that the id is taken.
        """
        cid = check_conversation_id(str(request.path_params["cid"]))
        scope = await self.api.scope(request)
        self.api.streams.admit()
        try:
            access = await access_as_unknown_would(self.sup, cid, scope=scope)
            if not access.exists or await self.sup.status(cid, scope=scope) is not Status.RUNNING:
                return Response(status_code=204)
            # Someone else may take the id over between these calls: still a 204.
            return await self._replay(cid, scope)
        except AccessDenied:
            await read_as_unknown_would(self.sup, cid, scope=scope)
            return Response(status_code=204)

    async def _replay(self, cid: str, scope: Any) -> Response:
        """Stream the running turn from its start (204 when it ended meanwhile)."""
        async with self.sup.subscribe(cid, scope=scope) as probe:
            snapshot = await anext(aiter(probe))
        assert isinstance(snapshot, StatusChanged)
        if snapshot.status is not Status.RUNNING:
            return Response(status_code=204)
        last = snapshot.seq
        stack = AsyncExitStack()
        try:
            after = max(0, last - self.sup.defaults.replay_buffer)
            subscription = await stack.enter_async_context(
                self.sup.subscribe(cid, after=after, scope=scope)
            )
            events = aiter(subscription)
            replayed: list[Event] = []
            while not replayed or replayed[-1].seq < last:
                replayed.append(await anext(events))
        except BaseException:
            await stack.aclose()
            raise
        start = turn_start_index(replayed)
        if start is None:
            if isinstance(replayed[-1], StatusChanged) and replayed[-1].gap:
                replayed = []  # the turn began before the buffer: follow it from now
            start = 0
        turn = replayed[start:]
        translator = _Translator(message_id="turn-")
        translator.message_id = f"turn-{turn[0].seq}" if turn else f"turn-{last}"
        translator_started = list(translator._start())
        live = resubscribing(self.sup, cid, scope=scope, stack=stack, events=events)
        steps = follow_turn(replay_then_follow(turn[1:] if turn else [], live), mode="running")

        async def recover() -> str:
            return await reply_text(self.sup, cid, scope=scope, user_message_id=None)

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in translator_started:
                yield _chunk(chunk)
            if turn and isinstance(turn[0], StatusChanged):
                yield _chunk(translator._transient("status", _status_data(turn[0])))
            async for data in _encode(steps, translator, recover):
                yield data

        return self._respond(chunks(), stack, cid)
