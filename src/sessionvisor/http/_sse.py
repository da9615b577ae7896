"""The event stream: a conversation's events as Server-Sent Events.

``EventStream`` is a small ASGI response rather than a generator handed to
``StreamingResponse`` because it must notice a client that goes away *at once*
(to unsubscribe and stop counting as a viewer), not at its next write: it
listens for ``http.disconnect`` beside the writer and cancels the writer when
it arrives. Everything is anyio, so it runs on asyncio and on trio.

Streaming deltas to many clients is the hot path of a chat backend (workload
W7, ``bench/stream.py``), so the writer does as little per event as it can:
every event is encoded once, not once per subscriber (``EncodedEvents`` keeps
the bytes of recent events, shared by all the streams of an app); the events
waiting in a subscription when the writer wakes go out as one write, not one
each; and heartbeats come from the task that already waits for the client to
disconnect (it looks at a write counter every half heartbeat), instead of a
timeout armed around every wait for the next event or a task of their own.

A stream on another owner's conversation must not tell that it exists: it is a
``BlindSubscription``, which starts exactly as a subscription to an unused id
(the ``not_running`` snapshot at seq 0) and then delivers nothing, and a stream
whose id someone else takes while it waits turns into one.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs
import structlog
from starlette.types import Receive, Scope, Send

from .._clock import utcnow
from .._errors import AccessDenied, SubscriberOverflow
from ..sessions import Delta, Event, SessionSupervisor, Status, StatusChanged, Subscription
from ._errors import HTTPError

__all__ = [
    "Access",
    "BlindSubscription",
    "EncodedEvents",
    "EventStream",
    "StreamRegistry",
    "access_as_unknown_would",
    "close_event_streams",
    "format_event",
    "read_as_unknown_would",
    "unknown_conversation_start",
]

_log = structlog.get_logger("sessionvisor.http")

#: How long a browser waits before reconnecting a dropped stream, in milliseconds.
RETRY_MS = 1000

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    # Tell nginx-style proxies not to buffer the stream.
    (b"x-accel-buffering", b"no"),
]
_PING = b": ping\n\n"
# How often a blind stream looks whether the supervisor closed.
_BLIND_POLL = 0.5
# One write carries at most this many queued events (and about this many bytes),
# so a subscriber far behind still lets the loop serve the other streams.
_MAX_BATCH_EVENTS = 64
_MAX_BATCH_BYTES = 64 * 1024

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# The Delta shortcut below writes these fields in this order; should Delta ever
# change, the shortcut turns itself off rather than drop a field.
_DELTA_SHORTCUT = tuple(f.name for f in attrs.fields(Delta)) == (
    "seq",
    "agent_id",
    "conversation_id",
    "at",
    "text",
)


def format_event(event: Event) -> bytes:
    """Return one SSE message: ``id:`` = seq, ``event:`` = class name, ``data:`` = JSON.

    The JSON is ``event.to_json()``; a ``Delta`` (the bulk of a stream) takes a
    shortcut that writes the same bytes without building the dict.
    """
    if _DELTA_SHORTCUT and type(event) is Delta:
        data = (
            f'{{"type":"Delta","seq":{event.seq},"agent_id":{_dumps(event.agent_id)},'
            f'"conversation_id":{_dumps(event.conversation_id)},'
            f'"at":"{event.at.isoformat()}","text":{_dumps(event.text)}}}'
        )
    else:
        data = _dumps(event.to_json())
    return f"id: {event.seq}\nevent: {event.event_type}\ndata: {data}\n\n".encode()


@attrs.frozen
class Access:
    """Whether a caller may see a conversation: ``exists`` for them, or ``denied``.

    A refused caller gets ``exists=False`` as for an unknown id (after the same
    store read); ``denied`` tells the two apart for what must not be held.
    """

    exists: bool
    denied: bool = False


async def access_as_unknown_would(supervisor: SessionSupervisor, cid: str, *, scope: Any) -> Access:
    """``check_access``, where another owner's conversation looks like an unknown one.

    Raises what ``check_access`` raises, except ``AccessDenied``.
    """
    try:
        return Access(exists=await supervisor.check_access(cid, scope=scope))
    except AccessDenied:
        await read_as_unknown_would(supervisor, cid, scope=scope)
        return Access(exists=False, denied=True)


async def read_as_unknown_would(supervisor: SessionSupervisor, cid: str, *, scope: Any) -> None:
    """After a refusal, spend the store read an unknown id costs, if the refusal skipped it.

    A conversation live in this process is refused before the store is read,
    while an unknown id is looked up there; without this, another owner's live
    conversation would answer measurably faster than an id nobody uses.
    """
    try:
        await supervisor.running(cid, scope=scope)
    except AccessDenied:
        # Only the time matters; a store that fails here fails an unknown id's read too,
        # but the refusal is the answer either way.
        with contextlib.suppress(Exception):
            await supervisor.store.load(cid)
    except Exception:
        return


def unknown_conversation_start(
    supervisor: SessionSupervisor, conversation_id: str, after: int | None
) -> list[Event]:
    """The events a subscription to a conversation nobody created starts with.

    Nothing was ever published for it, so its seq is 0 and it is not running:
    a plain subscription gets that snapshot, ``after=0`` gets nothing, and a
    seq it never issued gets the snapshot marked as a gap (as ``subscribe`` does).
    """
    if after == 0:
        return []
    return [
        StatusChanged(
            seq=0,
            # The agent id is a function of the conversation id alone, so this is
            # the one a subscription to the unknown conversation would name.
            agent_id=supervisor._agent_id(conversation_id),
            conversation_id=conversation_id,
            at=utcnow(),
            status=Status.NOT_RUNNING,
            gap=after is not None,
        )
    ]


class BlindSubscription:
    """Reads like a subscription to an unknown conversation, and never delivers anything else.

    A stream on another owner's conversation (or on one someone else created
    while the stream waited) must look exactly like a stream on an id nobody
    uses: the same first events, then silence until the supervisor closes. It
    holds nothing of the real conversation (no subscription, no viewer mark),
    so the owner's events cannot reach it and the stranger keeps nothing alive.
    """

    def __init__(
        self,
        supervisor: SessionSupervisor,
        events: list[Event],
        *,
        poll: float = _BLIND_POLL,
    ) -> None:
        self._supervisor = supervisor
        self._events: deque[Event] = deque(events)
        self._poll = poll

    def __aiter__(self) -> BlindSubscription:
        return self

    async def __anext__(self) -> Event:
        if self._events:
            return self._events.popleft()
        # A real subscription ends when the supervisor closes its topics. Nothing a
        # stranger may hold announces that, so look now and then (blind streams are
        # rare, and the app's own shutdown cancels them at once through the registry).
        while self._supervisor.phase != "closed":  # noqa: ASYNC110
            await anyio.sleep(self._poll)
        raise StopAsyncIteration

    def pending(self) -> int:
        return len(self._events)


async def _nothing() -> None:
    return None


class EncodedEvents:
    """The SSE bytes of recently sent events, so each event is encoded once.

    Every subscriber of a conversation receives the same event objects, so the
    first stream to send one encodes it and the others reuse the bytes. Keyed
    by identity (an entry holds its event, so the id cannot be reused while it
    is cached) and bounded: the oldest entries go first.
    """

    def __init__(self, size: int = 1024) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        self._size = size
        self._entries: OrderedDict[int, tuple[Event, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def encode(self, event: Event) -> bytes:
        """Return ``format_event(event)``, computed at most once while it stays cached."""
        entry = self._entries.get(id(event))
        if entry is not None and entry[0] is event:
            return entry[1]
        data = format_event(event)
        self._entries[id(event)] = (event, data)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return data


class StreamRegistry:
    """The event streams an app has open, so a server shutting down can end them.

    A server waits for open responses before it shuts down, and an event stream
    never ends by itself; ``close()`` ends them all.
    """

    def __init__(self) -> None:
        self._scopes: dict[anyio.CancelScope, str] = {}  # open stream -> its protocol
        self.closing = False
        self.encoded = EncodedEvents()

    def __len__(self) -> int:
        return len(self._scopes)

    def add(self, scope: anyio.CancelScope, protocol: str = "sse") -> None:
        self._scopes[scope] = protocol

    def discard(self, scope: anyio.CancelScope) -> None:
        self._scopes.pop(scope, None)

    def open_by_protocol(self) -> dict[str, int]:
        """How many streams are open, by protocol (``sse``, ``ai-sdk``, ``ag-ui``)."""
        counts: dict[str, int] = {}
        for protocol in self._scopes.values():
            counts[protocol] = counts.get(protocol, 0) + 1
        return counts

    def admit(self) -> None:
        """Refuse a new stream (503) once ``close`` has run: the server is shutting down."""
        if self.closing:
            raise HTTPError(503, "RegistryUnavailable", "the server is shutting down")

    def close(self) -> int:
        """End every open stream (and refuse new ones); return how many were open."""
        self.closing = True
        scopes = list(self._scopes)
        for scope in scopes:
            scope.cancel()
        return len(scopes)


def close_event_streams(app: Any) -> int:
    """End every open event stream of an app made by ``create_app``.

    Call it when the server starts shutting down (``python -m sessionvisor``
    does): servers wait for open responses first, and an event stream stays
    open until its client leaves. Browsers reconnect with ``Last-Event-ID``
    to whichever server comes up next; this app answers later stream requests
    with 503.

    Returns:
        How many streams were open.

    Raises:
        LookupError: ``app`` was not made by ``create_app``.
    """
    registry = getattr(getattr(app, "state", None), "event_streams", None)
    if not isinstance(registry, StreamRegistry):
        raise LookupError(f"{app!r} was not made by sessionvisor.http.create_app")
    return registry.close()


class EventStream:
    """An ASGI response streaming one subscription as SSE until the client leaves.

    The subscription and the viewer mark are entered by the endpoint before the
    response starts (so ownership errors become ordinary error answers), and
    ``cleanup`` leaves them. The stream ends when the subscription ends (drain),
    overflows (the client reconnects with ``Last-Event-ID``), the client
    disconnects, or the registry closes it. A stream that turns out to be on
    someone else's conversation (created by another owner after it opened)
    does not end, which would tell the client the id was just taken: it lets
    go of the subscription and goes on as a stream on an unknown id would.
    """

    def __init__(
        self,
        subscription: Subscription | BlindSubscription,
        *,
        supervisor: SessionSupervisor,
        scope: Any,
        conversation_id: str,
        verified: bool,
        heartbeat: float | None,
        registry: StreamRegistry,
        cleanup: Callable[[], Awaitable[Any]],
    ) -> None:
        self._sub = subscription
        self._supervisor = supervisor
        self._scope = scope
        self._cid = conversation_id
        self._verified = verified
        self._heartbeat = heartbeat if heartbeat else math.inf
        self._registry = registry
        self._cleanup = cleanup
        self._log = _log.bind(conversation_id=conversation_id)
        # Bumped by every write; the watcher pings when it stops moving.
        self._writes = 0
        self._started = False
        self._ended = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnected = anyio.Event()
        try:
            with anyio.CancelScope() as cancel_scope:
                self._registry.add(cancel_scope)
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._watch, receive, send, tg.cancel_scope, disconnected)
                        await self._stream(send)
                        tg.cancel_scope.cancel()
                finally:
                    self._registry.discard(cancel_scope)
            if cancel_scope.cancelled_caught and not disconnected.is_set():
                # Closed by the server: end the answer properly, but do not wait
                # long for a client that stopped reading.
                with anyio.move_on_after(1.0, shield=True):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            # Shielded: a cancelled stream must still unsubscribe and stop viewing.
            with anyio.CancelScope(shield=True):
                await self._cleanup()

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await _body(send, f"retry: {RETRY_MS}\n\n".encode())
        self._started = True
        try:
            await self._forward(send)
        except SubscriberOverflow as exc:
            # The client reconnects with Last-Event-ID and gets what it missed (or a gap).
            self._log.info("event_stream_overflow", error=str(exc))
        except Exception as exc:
            # The answer has started: all that is left is to log and end it.
            self._log.error(
                "event_stream_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc
            )
        self._ended = True  # no ping may follow the end of the answer
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _forward(self, send: Send) -> None:
        encode = self._registry.encoded.encode
        while True:
            sub = self._sub
            try:
                event = await anext(sub)
            except StopAsyncIteration:
                self._log.debug("event_stream_ended")
                return
            except AccessDenied:
                # Opened before the conversation existed, which someone else then created.
                await self._go_blind()
                continue
            if not self._verified and not await self._still_allowed():
                await self._go_blind()
                continue
            first = encode(event)
            self._writes += 1
            if not sub.pending():
                await _body(send, first)
                continue
            # Events queued while this stream waited for its turn go out in one write.
            batch = [first]
            size = len(first)
            while sub.pending() and len(batch) < _MAX_BATCH_EVENTS and size < _MAX_BATCH_BYTES:
                data = encode(await anext(sub))
                batch.append(data)
                size += len(data)
            await _body(send, b"".join(batch))

    async def _watch(
        self,
        receive: Receive,
        send: Send,
        cancel_scope: anyio.CancelScope,
        disconnected: anyio.Event,
    ) -> None:
        """End the stream when the client disconnects; ping after a heartbeat of quiet.

        Between messages from the client it wakes every half heartbeat and pings
        once the write counter has not moved for two wakes (between 1 and 1.5
        heartbeats of quiet). A ping may overlap the writer's write only while
        the connection is paused for flow control, and each write is whole, so
        a ping never splits an event.
        """
        period = self._heartbeat / 2
        seen = [-1, -1]
        while True:
            with anyio.move_on_after(period):
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    cancel_scope.cancel()
                    return
                continue
            now = self._writes
            if now == seen[0] == seen[1] and self._started and not self._ended:
                # Quiet for a while: a comment line keeps proxies from closing the stream.
                self._writes += 1
                now = self._writes
                try:
                    await _body(send, _PING)
                except Exception:
                    # The connection is going (or the answer ended while this
                    # write waited for the client to drain): end the stream.
                    cancel_scope.cancel()
                    return
            seen = [seen[1], now]

    async def _go_blind(self) -> None:
        """Let go of the conversation and send nothing more, as if it still did not exist."""
        self._log.info("event_stream_denied")
        cleanup, self._cleanup = self._cleanup, _nothing
        with anyio.CancelScope(shield=True):
            await cleanup()
        # The client has had the unknown conversation's first events already.
        self._sub = BlindSubscription(self._supervisor, [])
        self._verified = True

    async def _still_allowed(self) -> bool:
        """Check ownership once the conversation exists.

        The stream may have been opened before the conversation was created;
        whoever creates it owns it, and someone else's stream must not see it.
        """
        try:
            exists = await self._supervisor.check_access(self._cid, scope=self._scope)
        except AccessDenied:
            if isinstance(self._sub, BlindSubscription):
                # Its events are an unknown id's own: the check only has to take
                # the time it takes for an unknown id.
                await read_as_unknown_would(self._supervisor, self._cid, scope=self._scope)
                self._verified = True
                return True
            return False
        self._verified = exists
        return True


async def _body(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})
