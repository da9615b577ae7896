"""What the HTTP tests share.

``open_app`` enters a real ``SessionSupervisor`` (memory or SQLite store) and
serves ``create_app`` through ``httpx.ASGITransport`` (asyncio and trio).
``asgi_stream`` drives one event-stream request straight through the ASGI
interface, reading frames as the app sends them and disconnecting on demand,
since ``ASGITransport`` buffers whole answers; it runs on both backends too.
``serve`` runs the app on a real uvicorn server (asyncio only).
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream

from sessionvisor import SessionSupervisor, SingleRouter, StateStore
from sessionvisor.http import close_event_streams, create_app, header_scope
from sessionvisor.testing import ScriptedAgent, wait_until

#: The longest any single wait may take before it counts as a hang.
WAIT = 5.0
ALICE = {"X-User": "alice"}
BOB = {"X-User": "bob"}


class Env:
    """A supervisor, its app, an HTTP client on it, and the agent every session runs."""

    def __init__(
        self, sup: SessionSupervisor, app: Any, client: httpx.AsyncClient, agent: Any
    ) -> None:
        self.sup = sup
        self.app = app
        self.client = client
        self.agent = agent

    async def send(
        self, cid: str, content: Any, headers: Mapping[str, str] = ALICE, **body: Any
    ) -> httpx.Response:
        return await self.client.post(
            f"/conversations/{cid}/messages", json={"content": content, **body}, headers=headers
        )


def scripted_router(agent: Any, supervisor_opts: Mapping[str, Any] | None = None) -> SingleRouter:
    """Every conversation gets ``agent`` (with these per-session options)."""

    def factory(agent_id: str, config: Any) -> Any:
        if supervisor_opts:
            return agent, {"supervisor_opts": dict(supervisor_opts)}
        return agent

    return SingleRouter(factory)


@asynccontextmanager
async def open_app(
    router: Any = None,
    *,
    agent: Any = None,
    store: StateStore | None = None,
    supervisor_opts: Mapping[str, Any] | None = None,
    scope_from_request: Callable[..., Any] = header_scope,
    enter: bool = True,
    clock: Any = None,
    **app_options: Any,
) -> AsyncIterator[Env]:
    agent = agent if agent is not None else ScriptedAgent(stream=True)
    sup = SessionSupervisor(
        router if router is not None else scripted_router(agent),
        store=store,
        supervisor_opts=supervisor_opts,
        clock=clock,
    )
    app = create_app(sup, scope_from_request=scope_from_request, **app_options)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        if enter:
            async with sup:
                yield Env(sup, app, client, agent)
        else:
            yield Env(sup, app, client, agent)


# -- Server-Sent Events --------------------------------------------------------------


class Frame:
    """One SSE message (or a comment line, when ``comment`` is set)."""

    def __init__(self, fields: dict[str, str], comment: str | None = None) -> None:
        self.fields = fields
        self.comment = comment

    @property
    def id(self) -> int:
        return int(self.fields["id"])

    @property
    def event(self) -> str:
        return self.fields.get("event", "message")

    @property
    def data(self) -> Any:
        return json.loads(self.fields["data"])

    def __repr__(self) -> str:
        if self.comment is not None:
            return f"Frame(comment={self.comment!r})"
        return f"Frame({self.fields.get('id')}, {self.event}, {self.fields.get('data', '')[:80]})"


class SSEParser:
    """Splits a byte stream into SSE frames (comments included)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data.replace(b"\r\n", b"\n")
        frames: list[Frame] = []
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            fields: dict[str, str] = {}
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    frames.append(Frame({}, comment=line[1:].strip()))
                    continue
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
            if fields:
                frames.append(Frame(fields))
        return frames


class StreamReader:
    """Reads frames of one event-stream answer; ``event()`` skips comments and ``retry:``.

    ``next_chunk`` returns the next piece of the body and raises EOFError at its
    end; it must survive cancellation (a timed-out read may be retried).
    """

    def __init__(self, next_chunk: Callable[[], Awaitable[bytes]]) -> None:
        self._next_chunk = next_chunk
        self._parser = SSEParser()
        self._pending: list[Frame] = []
        self.ended = False
        self.comments: list[str] = []

    async def frame(self, timeout: float = WAIT) -> Frame:
        """The next frame; raises EOFError when the answer ended."""
        with anyio.fail_after(timeout):
            while not self._pending:
                try:
                    chunk = await self._next_chunk()
                except EOFError:
                    self.ended = True
                    raise
                self._pending.extend(self._parser.feed(chunk))
        return self._pending.pop(0)

    async def event(self, timeout: float = WAIT) -> Frame:
        """The next event (comments are recorded in ``comments``)."""
        with anyio.fail_after(timeout):
            while True:
                frame = await self.frame(math.inf)
                if frame.comment is not None:
                    self.comments.append(frame.comment)
                    continue
                if "id" in frame.fields:
                    return frame

    async def until(self, predicate: Callable[[Frame], bool], timeout: float = WAIT) -> list[Frame]:
        """Every event up to and including the first that matches."""
        seen: list[Frame] = []
        with anyio.fail_after(timeout):
            while True:
                frame = await self.event(math.inf)
                seen.append(frame)
                if predicate(frame):
                    return seen

    async def end(self, timeout: float = WAIT) -> list[Frame]:
        """Read until the answer ends; return the events still sent."""
        seen: list[Frame] = []
        with anyio.fail_after(timeout):
            while True:
                try:
                    frame = await self.frame(math.inf)
                except EOFError:
                    return seen
                if frame.comment is None and "id" in frame.fields:
                    seen.append(frame)


class AsgiStream(StreamReader):
    """One event-stream request run straight through the app's ASGI interface."""

    def __init__(self, messages: MemoryObjectReceiveStream[dict[str, Any]]) -> None:
        super().__init__(self.chunk)
        self._messages = messages
        self._complete = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.disconnected = anyio.Event()
        self.finished = anyio.Event()

    async def start(self) -> None:
        """Wait for the start of the response: its status and headers."""
        with anyio.fail_after(WAIT):
            message = await self._messages.receive()
        assert message["type"] == "http.response.start", message
        self.status = message["status"]
        self.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}

    async def chunk(self) -> bytes:
        """The next piece of the body, as the app sent it (EOFError at its end)."""
        while not self._complete:
            try:
                message = await self._messages.receive()
            except anyio.EndOfStream:
                break
            if message["type"] != "http.response.body":
                continue
            self._complete = not message.get("more_body", False)
            if message.get("body"):
                return bytes(message["body"])
        raise EOFError("the event stream ended")

    async def json(self) -> Any:
        """The whole body of a non-stream answer, parsed."""
        body = b""
        with anyio.fail_after(WAIT):
            while True:
                try:
                    body += await self.chunk()
                except EOFError:
                    return json.loads(body)

    def disconnect(self) -> None:
        self.disconnected.set()


@asynccontextmanager
async def asgi_stream(
    app: Any,
    path: str,
    *,
    headers: Mapping[str, str] = ALICE,
    query: str = "",
    buffer: float = math.inf,
) -> AsyncIterator[AsgiStream]:
    """Run ``GET path`` through ``app`` and yield the answer as it streams.

    Leaving the block disconnects the client and waits for the app to finish.
    ``buffer`` bounds the chunks the "network" holds: a reader that stops
    reading then blocks the app's ``send``, as a stalled client does.
    """
    send_stream, receive_stream = anyio.create_memory_object_stream[dict[str, Any]](buffer)
    stream = AsgiStream(receive_stream)
    request_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await stream.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if stream.disconnected.is_set():
            return
        await send_stream.send(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            stream.finished.set()
            send_stream.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await stream.start()
        try:
            yield stream
        finally:
            stream.disconnect()
            with anyio.fail_after(WAIT):
                await stream.finished.wait()
            receive_stream.close()


# -- a real server ------------------------------------------------------------------


def free_socket(*, sndbuf: int | None = None) -> socket.socket:
    """A listening socket on a free 127.0.0.1 port.

    ``sndbuf`` sets the send buffer that accepted connections inherit, so a
    client that stops reading blocks the server after a few kilobytes.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


@asynccontextmanager
async def serve(app: Any, *, lifespan: str = "on", sndbuf: int | None = None) -> AsyncIterator[str]:
    """Serve ``app`` on uvicorn on a free 127.0.0.1 port (asyncio only); yield the base URL."""
    import uvicorn

    sock = free_socket(sndbuf=sndbuf)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan=lifespan, log_level="warning", timeout_graceful_shutdown=5, backlog=1024
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        await wait_until(lambda: server.started, timeout=WAIT, interval=0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            try:
                close_event_streams(app)
            except LookupError:
                pass  # a parent app (FastAPI): its mounted apps end with the server
            server.should_exit = True
    sock.close()


@asynccontextmanager
async def http_stream(
    client: httpx.AsyncClient, url: str, headers: Mapping[str, str] = ALICE
) -> AsyncIterator[StreamReader]:
    """``GET url`` over the network, yielding a reader of its SSE frames."""
    async with client.stream("GET", url, headers=dict(headers)) as response:
        assert response.status_code == 200, response.status_code
        send, receive = anyio.create_memory_object_stream[bytes](math.inf)

        async def pump() -> None:
            async with send:
                async for chunk in response.aiter_raw():
                    await send.send(chunk)

        async def next_chunk() -> bytes:
            try:
                return await receive.receive()
            except anyio.EndOfStream:
                raise EOFError("the event stream ended") from None

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            yield StreamReader(next_chunk)
            tg.cancel_scope.cancel()
