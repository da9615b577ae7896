"""A load check: 200 event-stream clients on 50 conversations over a real server.

Every client must see every event of its conversation, in order, with no gap
(a client that is cut off reconnects with ``Last-Event-ID``, as a browser's
``EventSource`` does). Clients that stall (stop reading) must not make the
server hold more than ``subscriber_buffer`` events for them: they are cut off
and the conversation goes on for everyone else. asyncio only (uvicorn).
"""

from __future__ import annotations

import random
import socket
import time

import anyio
import httpx
import psutil
import pytest
import structlog

from sessionvisor import Done, SessionSupervisor, SingleRouter, Status, Turn
from sessionvisor.testing import subscriber_backlogs, wait_until

from ._support import ALICE, SSEParser, open_app, serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CONVERSATIONS = 50
CLIENTS_PER_CONVERSATION = 4
MESSAGES_PER_CONVERSATION = 3
STALLED_CLIENTS = 10
SUBSCRIBER_BUFFER = 64
FLOOD_WORDS = 3000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class WordAgent:
    """Streams a reply word by word; ``flood`` streams thousands as fast as it can."""

    async def run(self, turn: Turn) -> Done:
        text = turn.state.messages[-1].text()
        if text == "flood":
            for i in range(FLOOD_WORDS):
                turn.delta(f" w{i}")
                if i % 50 == 0:
                    await anyio.sleep(0)
            return Done(turn.state)
        for i in range(20):
            turn.delta(f" {text}-{i}")
            await anyio.sleep(0.002)
        return Done(turn.state)


class Client:
    """An EventSource-like reader: records ids, reconnects with Last-Event-ID when cut off."""

    def __init__(self, cid: str) -> None:
        self.cid = cid
        self.ids: list[int] = []
        self.kinds: list[str] = []
        self.gaps = 0
        self.reconnects = 0
        self.connected = anyio.Event()

    @property
    def last(self) -> int:
        return self.ids[-1] if self.ids else -1

    async def run(self, http: httpx.AsyncClient) -> None:
        while True:
            headers = dict(ALICE)
            if self.ids:
                headers["Last-Event-ID"] = str(self.last)
                self.reconnects += 1
            parser = SSEParser()
            async with http.stream(
                "GET", f"/conversations/{self.cid}/events", headers=headers
            ) as r:
                assert r.status_code == 200
                async for chunk in r.aiter_raw():
                    for frame in parser.feed(chunk):
                        if "id" not in frame.fields:
                            continue
                        if frame.event == "StatusChanged" and frame.data.get("gap"):
                            self.gaps += 1
                        self.ids.append(frame.id)
                        self.kinds.append(frame.event)
                        self.connected.set()


def stall(port: int, cid: str) -> socket.socket:
    """Open an event stream and never read from it (with a tiny receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /conversations/{cid}/events HTTP/1.1\r\nHost: x\r\nX-User: alice\r\n\r\n".encode()
    )
    return sock


def buffered(sup: SessionSupervisor, cids: list[str]) -> tuple[int, int]:
    """(subscriptions, the most events any one of them holds) over the conversations."""
    backlogs = [n for cid in cids for n in subscriber_backlogs(sup, cid)]
    return len(backlogs), max(backlogs, default=0)


async def last_seq(sup: SessionSupervisor, cid: str) -> int:
    """The seq of the conversation's last event: a new subscription's snapshot carries it."""
    async with sup.subscribe(cid, scope="alice") as sub:
        return (await sub.__anext__()).seq


async def test_200_clients_on_50_conversations_get_every_event_in_order() -> None:
    cids = [f"load-{i}" for i in range(CONVERSATIONS)]
    clients = [Client(cid) for cid in cids for _ in range(CLIENTS_PER_CONVERSATION)]
    with structlog.testing.capture_logs() as logs:
        run = await _load(cids, clients)

    for client in clients:
        assert client.gaps == 0, client.cid
        assert client.ids[0] == 0
        assert client.ids == list(range(run.finals[client.cid] + 1)), client.cid
    by_cid: dict[str, list[list[str]]] = {}
    for client in clients:
        by_cid.setdefault(client.cid, []).append(client.kinds)
    for cid, kinds in by_cid.items():
        assert all(k == kinds[0] for k in kinds), cid  # the same events for every client

    # Only the stalled clients were cut off, and none held more than its buffer.
    overflows = [e for e in logs if e["event"] == "event_stream_overflow"]
    assert [e["conversation_id"] for e in overflows] == [cids[0]] * STALLED_CLIENTS
    assert run.peak_pending <= SUBSCRIBER_BUFFER
    assert run.peak_subscriptions <= len(clients) + STALLED_CLIENTS

    delivered = sum(len(c.ids) for c in clients)
    print(
        f"\nload check: {len(clients)} SSE clients, {CONVERSATIONS} conversations, "
        f"{CONVERSATIONS * MESSAGES_PER_CONVERSATION} messages (one a {FLOOD_WORDS}-word flood), "
        f"{STALLED_CLIENTS} stalled clients; {delivered} events delivered in "
        f"{run.elapsed:.2f} s ({delivered / run.elapsed:.0f}/s); reconnects "
        f"{sum(c.reconnects for c in clients)}; stalled clients cut off {len(overflows)}; "
        f"peak subscriptions {run.peak_subscriptions}, peak events buffered for one "
        f"subscriber {run.peak_pending} (limit {SUBSCRIBER_BUFFER}); "
        f"RSS {run.rss_before / 2**20:.0f} -> {run.rss_after / 2**20:.0f} MiB"
    )


class Run:
    elapsed = 0.0
    finals: dict[str, int]
    peak_subscriptions = 0
    peak_pending = 0
    rss_before = 0
    rss_after = 0


async def _load(cids: list[str], clients: list[Client]) -> Run:
    run = Run()
    process = psutil.Process()
    router = SingleRouter(lambda agent_id, config: WordAgent())
    opts = {"subscriber_buffer": SUBSCRIBER_BUFFER, "replay_buffer": 2 * FLOOD_WORDS}
    flood_cid = cids[0]
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)

    async with (
        open_app(router, supervisor_opts=opts, heartbeat=None) as env,
        serve(env.app, sndbuf=16384) as url,
        httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as readers,
        httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as senders,
        anyio.create_task_group() as tg,
    ):
        port = int(url.rsplit(":", 1)[1])
        run.rss_before = process.memory_info().rss

        async def sample() -> None:
            while True:
                count, most = buffered(env.sup, cids)
                run.peak_subscriptions = max(run.peak_subscriptions, count)
                run.peak_pending = max(run.peak_pending, most)
                await anyio.sleep(0.005)

        tg.start_soon(sample)
        for client in clients:
            tg.start_soon(client.run, readers)
        with anyio.fail_after(30):
            for client in clients:
                await client.connected.wait()

        stalled = [stall(port, flood_cid) for _ in range(STALLED_CLIENTS)]
        await wait_until(
            lambda: (
                env.sup.subscriber_count(flood_cid) >= CLIENTS_PER_CONVERSATION + STALLED_CLIENTS
            ),
            timeout=10,
            interval=0.01,
        )

        started = time.monotonic()

        async def converse(cid: str) -> None:
            for n in range(MESSAGES_PER_CONVERSATION):
                await anyio.sleep(random.uniform(0, 0.05))
                content = "flood" if cid == flood_cid and n == 0 else f"m{n}"
                response = await senders.post(
                    f"/conversations/{cid}/messages", json={"content": content}, headers=ALICE
                )
                assert response.status_code == 202, response.text

        async with anyio.create_task_group() as talk:
            for cid in cids:
                talk.start_soon(converse, cid)

        def answered(cid: str) -> bool:
            handle = env.sup.get(cid, scope="alice")
            assert handle is not None
            return handle.status == Status.IDLE and not handle.snapshot().queued

        with anyio.fail_after(60):
            for cid in cids:
                await wait_until(lambda cid=cid: answered(cid), timeout=60, interval=0.01)
        run.finals = {cid: await last_seq(env.sup, cid) for cid in cids}
        with anyio.fail_after(60):
            for client in clients:
                await wait_until(
                    lambda c=client: c.last >= run.finals[c.cid], timeout=60, interval=0.01
                )
        run.elapsed = time.monotonic() - started
        run.rss_after = process.memory_info().rss

        # The stalled readers were cut off: the conversation no longer feeds them.
        assert env.sup.subscriber_count(flood_cid) == CLIENTS_PER_CONVERSATION
        for sock in stalled:
            sock.close()
        # Closing them ends their streams: they stop counting as viewers.
        await wait_until(
            lambda: env.sup.viewer_count(flood_cid) <= CLIENTS_PER_CONVERSATION,
            timeout=10,
            interval=0.01,
        )
        tg.cancel_scope.cancel()
    return run
