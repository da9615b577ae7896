"""What the frontend protocols share: following one turn of a conversation, and streaming it.

The core knows nothing of turns as a frontend sees them: it publishes events.
``follow_turn`` reads a subscription and finds the turn a request is about
(the one a send started, the next one after a queued send, or the one running
now), so that the protocol modules only translate events into their own
chunks. ``ChunkStream`` is the ASGI response that writes those chunks and lets
go of the subscription when the client leaves or the server shuts down.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Literal

import anyio
import anyio.abc
import structlog
from starlette.types import Receive, Scope, Send

from .._errors import SubscriberOverflow
from ..sessions import (
    Event,
    MessageAppended,
    MessageQueued,
    SessionFailed,
    SessionSupervisor,
    Shutdown,
    Status,
    StatusChanged,
)
from ._sse import StreamRegistry

__all__ = [
    "ChunkStream",
    "Step",
    "follow_turn",
    "replay_then_follow",
    "reply_text",
    "resubscribing",
    "turn_start_index",
]

_log = structlog.get_logger("sessionvisor.http")
# Chunks a stream may hold ahead of its client, and the most it writes at once.
_BATCH = 64

#: What ``follow_turn`` says about each event it hands on.
#: ``wait``: before the turn (only transient news: queueing, statuses);
#: ``start``: the event that starts the turn; ``event``: inside the turn;
#: ``end``: the event that ends it (a status that is not ``running``, a failure
#: or a shutdown); ``next``: the next turn began, so this one is over.
Step = Literal["wait", "start", "event", "end", "next"]

_ENDS = (SessionFailed, Shutdown)


def _ends_turn(event: Event) -> bool:
    if isinstance(event, StatusChanged):
        return event.status is not Status.RUNNING
    return isinstance(event, _ENDS)


async def follow_turn(
    events: AsyncIterator[Event],
    *,
    mode: Literal["started", "queued", "running"],
    queued_content: Any = None,
) -> AsyncGenerator[tuple[Step, Event], None]:
    """Yield ``(step, event)`` for the events of one turn, then stop.

    Args:
        events: a subscription opened before the send (its snapshot already read).
        mode: ``"started"``: the send started a turn (the first ``running``
            status starts it); ``"queued"``: the send was queued, so the turn
            is the first one that begins after its ``MessageQueued``;
            ``"running"``: the events replay the running turn, whose first
            event is the first one given.
        queued_content: the content of the queued message (``mode="queued"``),
            to tell its ``MessageQueued`` from another client's.
    """
    in_turn = mode == "running"
    waiting_for_queue = mode == "queued"
    # In the turn that runs when a queued message arrives, a user message appended
    # after the reply starts the turn that answers it.
    replied = False
    async for event in events:
        if isinstance(event, StatusChanged) and event.gap:
            # Events were lost (the stream fell behind): decide from the status alone.
            if in_turn:
                yield ("event" if event.status is Status.RUNNING else "end"), event
                if event.status is not Status.RUNNING:
                    return
                continue
            if mode == "queued":
                waiting_for_queue, replied = False, False
                yield ("wait" if event.status is Status.RUNNING else "end"), event
                if event.status is not Status.RUNNING:
                    return
                continue
            # The turn this send started began (and may have ended) in the lost events.
            in_turn = True
            yield "start", event
            if event.status is not Status.RUNNING:
                yield "end", event
                return
            continue
        if not in_turn:
            if isinstance(event, SessionFailed):
                # The session gave up before the turn began: no turn will come.
                yield "end", event
                return
            if waiting_for_queue:
                if isinstance(event, MessageQueued) and event.message.content == queued_content:
                    waiting_for_queue = False
                    yield "wait", event
                    continue
                if isinstance(event, MessageAppended) and event.message.role == "assistant":
                    replied = True
                elif isinstance(event, StatusChanged) and event.status is Status.RUNNING:
                    replied = False
                yield "wait", event
                continue
            if isinstance(event, StatusChanged) and event.status is Status.RUNNING:
                in_turn = True
                replied = False
                yield "start", event
                continue
            if mode == "queued" and isinstance(event, MessageAppended):
                if event.message.role == "assistant":
                    replied = True
                elif event.message.role == "user" and replied:
                    in_turn = True
                    replied = False
                    yield "start", event
                    continue
            if _ends_turn(event) and mode == "queued":
                # The queue is held (an interrupt, a pause, an error): no turn
                # answers the message for now.
                yield "end", event
                return
            yield "wait", event
            continue
        if _ends_turn(event):
            yield "end", event
            return
        if isinstance(event, MessageAppended):
            if event.message.role == "assistant":
                replied = True
            elif event.message.role == "user" and replied:
                yield "next", event
                return
        yield "event", event


def turn_start_index(events: list[Event]) -> int | None:
    """The index of the event that starts the turn running at the end of ``events``.

    ``events`` is a replay of a conversation whose status is ``running``; the
    turn starts at its last ``running`` status, or later at a user message
    appended after a reply (the turn that answers queued messages). None when
    the replay does not reach back to the turn's start.
    """
    start: int | None = None
    replied = False
    for i, event in enumerate(events):
        if isinstance(event, StatusChanged) and event.status is Status.RUNNING:
            start, replied = i, False
        elif isinstance(event, MessageAppended) and start is not None:
            if event.message.role == "assistant":
                replied = True
            elif event.message.role == "user" and replied:
                start, replied = i, False
    return start


async def resubscribing(
    supervisor: SessionSupervisor,
    conversation_id: str,
    *,
    scope: Any,
    stack: AsyncExitStack,
    events: AsyncIterator[Event],
) -> AsyncIterator[Event]:
    """``events``, resubscribing with ``after=`` when the subscriber falls too far behind.

    A fast agent can outrun a slow client; the subscription is then cut off
    (``SubscriberOverflow``). A frontend stream cannot reconnect by itself as
    ``EventSource`` does, so this picks up where it stopped: the events still
    buffered, or a snapshot marked ``gap=True`` that ``follow_turn`` and the
    protocol translators recover from. Each new subscription joins ``stack``.
    """
    last = 0
    while True:
        try:
            event = await anext(events)
        except StopAsyncIteration:
            return
        except SubscriberOverflow:
            subscription = await stack.enter_async_context(
                supervisor.subscribe(conversation_id, after=last, scope=scope)
            )
            events = aiter(subscription)
            continue
        last = max(last, event.seq)
        yield event


async def reply_text(
    supervisor: SessionSupervisor, conversation_id: str, *, scope: Any, user_message_id: str | None
) -> str:
    """The stored reply to a user message (the last reply when the id is not known).

    What a stream that lost events falls back on: the reply as the history keeps it.
    """
    state = await supervisor.load(conversation_id, scope=scope)
    if state is None:
        return ""
    users = [i for i, m in enumerate(state.messages) if m.role == "user"]
    if user_message_id is not None:
        users = [i for i in users if state.messages[i].id == user_message_id]
    if not users:
        return ""
    replies: list[str] = []
    for message in state.messages[users[-1] + 1 :]:
        if message.role == "user":
            break
        if message.role == "assistant":
            replies.append(message.text())
    return "\n\n".join(r for r in replies if r)


async def replay_then_follow(
    replayed: list[Event], rest: AsyncIterator[Event]
) -> AsyncIterator[Event]:
    """The replayed events, then the live ones."""
    for event in replayed:
        yield event
    async for event in rest:
        yield event


class ChunkStream:
    """An ASGI response writing protocol chunks (already encoded) until they end.

    ``chunks`` is an async iterator of ``bytes``; ``cleanup`` (leaving the
    subscription) always runs, shielded, when the answer ends: normally, when
    the client disconnects, or when the app's stream registry closes it at
    shutdown. Quiet periods get an SSE comment every ``heartbeat`` seconds.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        headers: list[tuple[bytes, bytes]],
        registry: StreamRegistry,
        heartbeat: float | None,
        cleanup: Callable[[], Awaitable[Any]],
        log_context: dict[str, Any],
    ) -> None:
        self._chunks = chunks
        self._headers = headers
        self._registry = registry
        self._heartbeat = heartbeat if heartbeat else math.inf
        self._cleanup = cleanup
        self._log = _log.bind(**log_context)
        self._protocol = str(log_context.get("protocol", "stream"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.CancelScope() as cancel_scope:
                self._registry.add(cancel_scope, self._protocol)
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_watch_disconnect, receive, tg.cancel_scope)
                        await self._write(send)
                        tg.cancel_scope.cancel()
                finally:
                    self._registry.discard(cancel_scope)
        finally:
            with anyio.CancelScope(shield=True):
                await self._cleanup()
                aclose = getattr(self._chunks, "aclose", None)
                if aclose is not None:
                    await aclose()

    async def _write(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        # The chunks come from a generator, which a timeout must never interrupt:
        # a task produces them into a small channel and the heartbeat waits on that.
        # What piled up while the last write was in flight goes out as one write.
        sender, receiver = anyio.create_memory_object_stream[bytes](_BATCH)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._produce, sender)
                async with receiver:
                    ended = False
                    while not ended:
                        with anyio.move_on_after(self._heartbeat) as waited:
                            try:
                                batch = [await receiver.receive()]
                            except anyio.EndOfStream:
                                break
                        if waited.cancelled_caught:
                            await _body(send, b": ping\n\n")
                            continue
                        while len(batch) < _BATCH:
                            try:
                                batch.append(receiver.receive_nowait())
                            except anyio.WouldBlock:
                                break
                            except anyio.EndOfStream:
                                ended = True
                                break
                        await _body(send, b"".join(batch))
        except Exception as exc:
            # The answer has started: all that is left is to log and end it.
            self._log.error(
                "frontend_stream_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _produce(self, sender: anyio.abc.ObjectSendStream[bytes]) -> None:
        async with sender:
            async for data in self._chunks:
                await sender.send(data)


async def _body(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _watch_disconnect(receive: Receive, cancel_scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            cancel_scope.cancel()
            return
