"""W7: streaming deltas to many SSE clients over real uvicorn, beside a bare floor.

N clients hold ``GET /conversations/{cid}/events`` open on N/2 conversations
(two browser tabs per conversation); then every conversation runs one turn that
streams D ``turn.delta`` pieces. Each delta's text is the monotonic clock at
the moment the agent emitted it, so a client computes the delta-to-client
latency of every event it reads.

The **floor** is the same load on a bare Starlette app with no sessionvisor:
``GET /floor/{cid}/events`` is a ``StreamingResponse`` reading an anyio memory
stream, and ``POST /floor/{cid}/messages`` starts a task that encodes each
delta once and hands it to every subscriber's stream, in the same SSE format.
It is what the event loop, uvicorn and Starlette cost by themselves.

Both servers run in their own process (uvicorn, asyncio, the same settings),
one after the other in the same run; the clients run in this process on raw
asyncio sockets (a regex over each chunk, no HTTP client library), so the
client side stays cheap next to the server. Figures, per target: events/s
delivered (all deltas received / time from the first trigger to the last
receipt), p50/p99 latency, server RSS per connected client, server CPU per
event; then sessionvisor as a ratio of the floor.

    python bench/stream.py                      # N=1000, D=200, N/2 conversations
    python bench/stream.py --quick              # N=100, D=50: a few seconds
    python bench/stream.py --clients 400 --deltas 100 --interval 0.02

``--interval`` paces each conversation (seconds between deltas, like a model
producing tokens); the default 0 streams as fast as the server goes, which is
what events/s measures. One JSON object per target (and one with the ratios)
is printed, then a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
TARGETS = ("floor", "sessionvisor")
USER = "bench"
_DELTA_TEXT = re.compile(rb'"text":"(\d+)"')
_DELTA_EVENT = b"event: Delta\n"


# ------------------------------------------------------------------ the two servers


class StreamingAgent:
    """Streams ``deltas`` pieces, each the monotonic clock (ns) at emission, on "go"."""

    def __init__(self, deltas: int, interval: float) -> None:
        self.deltas = deltas
        self.interval = interval

    async def run(self, turn: Any) -> Any:
        import anyio
        import anyio.lowlevel

        from sessionvisor import Done

        if turn.state.messages[-1].text() != "go":
            return Done(turn.state, reply="ready")  # the warm-up message
        for _ in range(self.deltas):
            turn.delta(str(time.monotonic_ns()))
            if self.interval:
                await anyio.sleep(self.interval)
            else:
                await anyio.lowlevel.checkpoint()
        return Done(turn.state, reply=f"streamed {self.deltas} deltas")


def sessionvisor_app(deltas: int, interval: float) -> Any:
    from sessionvisor import MemoryStore, SessionSupervisor, SingleRouter
    from sessionvisor.http import create_app

    agent = StreamingAgent(deltas, interval)
    supervisor = SessionSupervisor(
        SingleRouter(lambda agent_id, config: agent),
        store=MemoryStore(),
        supervisor_opts={"inactivity_timeout": None},
    )
    return create_app(supervisor, page=False, admin=False)


def floor_app(deltas: int, interval: float) -> Any:
    """A bare Starlette SSE endpoint fed by anyio memory streams: no sessionvisor."""
    import anyio
    import anyio.lowlevel
    from anyio.streams.memory import MemoryObjectSendStream
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    subscribers: dict[str, list[MemoryObjectSendStream[bytes]]] = {}
    app_state: dict[str, Any] = {}
    seqs: dict[str, int] = {}
    group: list[Any] = []

    async def events(request: Request) -> Response:
        cid = request.path_params["cid"]
        send, receive = anyio.create_memory_object_stream[bytes](256)
        subscribers.setdefault(cid, []).append(send)

        async def body() -> Any:
            try:
                yield b"retry: 1000\n\n"
                async with receive:
                    async for chunk in receive:
                        yield chunk
            finally:
                with contextlib.suppress(ValueError):
                    subscribers[cid].remove(send)

        return StreamingResponse(body(), media_type="text/event-stream")

    async def produce(cid: str) -> None:
        for _ in range(deltas):
            seq = seqs[cid] = seqs.get(cid, 0) + 1
            event = {
                "type": "Delta",
                "seq": seq,
                "agent_id": f"agent-{cid}",
                "conversation_id": cid,
                "at": "2026-01-01T00:00:00+00:00",
                "text": str(time.monotonic_ns()),
            }
            data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
            frame = f"id: {seq}\nevent: Delta\ndata: {data}\n\n".encode()
            for stream in list(subscribers.get(cid, ())):
                try:
                    stream.send_nowait(frame)
                except anyio.WouldBlock:
                    subscribers[cid].remove(
                        stream
                    )  # a slow client is dropped, as sessionvisor does
                    stream.close()
            if interval:
                await anyio.sleep(interval)
            else:
                await anyio.lowlevel.checkpoint()

    async def messages(request: Request) -> Response:
        cid = request.path_params["cid"]
        await request.body()
        group[0].start_soon(produce, cid)
        return JSONResponse({"conversation_id": cid, "queued": False}, status_code=202)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        async with anyio.create_task_group() as tg:
            group.append(tg)
            yield
            tg.cancel_scope.cancel()

    def close() -> None:
        # Open responses end when their streams close, so the server can stop.
        for streams in subscribers.values():
            for stream in streams:
                stream.close()

    app_state["close"] = close

    app = Starlette(
        routes=[
            Route("/floor/{cid}/events", events, methods=["GET"]),
            Route("/floor/{cid}/messages", messages, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.close = app_state["close"]
    return app


def serve(target: str, port: int, deltas: int, interval: float) -> None:
    """The server process: one target on uvicorn until stdin closes."""
    import logging

    import structlog
    import uvicorn

    raise_fd_limit()
    # Logging costs both targets alike, and stdout is the pipe that says "ready":
    # warnings and errors only, on stderr.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    app = (
        sessionvisor_app(deltas, interval)
        if target == "sessionvisor"
        else floor_app(deltas, interval)
    )
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        backlog=4096,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.ensure_future(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.should_exit = True
        if target == "floor":
            app.state.close()
        else:
            from sessionvisor.http import close_event_streams

            close_event_streams(app)
        await task

    profile_path = os.environ.get("SESSIONVISOR_BENCH_PROFILE")
    if profile_path:
        import cProfile

        with cProfile.Profile() as profiler:
            asyncio.run(main())
        profiler.dump_stats(profile_path)
        return
    asyncio.run(main())


# ------------------------------------------------------------------ the clients


class SSEClient(asyncio.Protocol):
    """One event-stream connection: counts Delta events and their latencies."""

    def __init__(self, request: bytes, latencies: list[int], done: asyncio.Event, want: int):
        self.request = request
        self.latencies = latencies
        self.done = done
        self.want = want
        self.deltas = 0
        self.started = asyncio.get_running_loop().create_future()
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self._tail = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if not self.started.done():
            self.started.set_result(None)
        # A frame may straddle two reads: keep the incomplete tail for the next one.
        data = self._tail + data
        cut = data.rfind(b"\n\n") + 2
        self._tail = data[cut:]
        whole = data[:cut]
        count = whole.count(_DELTA_EVENT)
        if count:
            self.deltas += count
            self.latencies.extend(now - int(ts) for ts in _DELTA_TEXT.findall(whole))
            if self.deltas >= self.want:
                self.done.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.started.done():
            self.started.set_exception(ConnectionError("closed before answering"))
        self.done.set()


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


async def post(port: int, path: str, body: dict[str, Any]) -> int:
    """One POST on its own connection; returns the status code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nX-User: {USER}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1])


async def post_all(port: int, paths: list[str], body: dict[str, Any]) -> None:
    limit = asyncio.Semaphore(64)

    async def one(path: str) -> None:
        async with limit:
            status = await post(port, path, body)
        if status >= 300:
            raise RuntimeError(f"POST {path} answered {status}")

    await asyncio.gather(*(one(p) for p in paths))


async def drive(
    target: str, port: int, pid: int, clients: int, conversations: int, deltas: int, wait: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    cids = [f"c{i}" for i in range(conversations)]
    prefix = "/floor/{}" if target == "floor" else "/conversations/{}"
    if target == "sessionvisor":
        # The conversations exist before their viewers connect, as in a chat app.
        await post_all(port, [prefix.format(c) + "/messages" for c in cids], {"content": "warm"})
    rss_before = process_rss(pid)
    latencies: list[int] = []
    done_events: list[asyncio.Event] = []
    conns: list[SSEClient] = []
    for i in range(clients):
        request = (
            f"GET {prefix.format(cids[i % conversations])}/events HTTP/1.1\r\nHost: bench\r\n"
            f"X-User: {USER}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        done = asyncio.Event()
        client = SSEClient(request, latencies, done, deltas)
        await loop.create_connection(lambda c=client: c, "127.0.0.1", port)
        conns.append(client)
        done_events.append(done)
    await asyncio.wait_for(asyncio.gather(*(c.started for c in conns)), timeout=60)
    await asyncio.sleep(0.5)  # let the server settle after the connection burst
    rss_connected = process_rss(pid)
    cpu_before = process_cpu(pid)
    started = time.monotonic_ns()
    await post_all(port, [prefix.format(c) + "/messages" for c in cids], {"content": "go"})
    try:
        await asyncio.wait_for(asyncio.gather(*(d.wait() for d in done_events)), timeout=wait)
        timed_out = False
    except TimeoutError:
        timed_out = True
    finished = time.monotonic_ns()
    cpu = process_cpu(pid) - cpu_before
    received = sum(c.deltas for c in conns)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    expected = clients * deltas
    seconds = (finished - started) / 1e9
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] / 1e6

    return {
        "workload": "W7",
        "target": target,
        "clients": clients,
        "conversations": conversations,
        "deltas": deltas,
        "events_expected": expected,
        "events_received": received,
        "clients_cut_off": sum(1 for c in conns if c.closed and c.deltas < deltas),
        "timed_out": timed_out,
        "seconds": round(seconds, 3),
        "events_per_s": round(received / seconds) if seconds else 0,
        "latency_p50_ms": round(pct(0.50), 2),
        "latency_p99_ms": round(pct(0.99), 2),
        "latency_mean_ms": round(statistics.fmean(ordered) / 1e6, 2) if ordered else None,
        "rss_per_client_bytes": round((rss_connected - rss_before) / clients),
        "cpu_us_per_event": round(cpu / received * 1e6, 2) if received else None,
    }


async def run_target(args: argparse.Namespace, target: str) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", target]
    command += ["--port", str(port), "--deltas", str(args.deltas), "--interval", str(args.interval)]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_DIR / "src")},
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"the {target} server did not start: {line!r}")
        # Generous: a busy machine may stream for minutes; the run reports it if it timed out.
        wait = 300 + args.deltas * args.interval * 4
        return await drive(
            target, port, proc.pid, args.clients, args.conversations, args.deltas, wait
        )
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's figures over its repetitions: the median of each."""
    if len(rows) == 1:
        return dict(rows[0])
    out = dict(rows[0])
    out.pop("repetition", None)
    out["repetitions"] = len(rows)
    for key in (
        "events_received",
        "seconds",
        "events_per_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_mean_ms",
        "rss_per_client_bytes",
        "cpu_us_per_event",
    ):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = round(statistics.median(values), 2) if values else None
    out["timed_out"] = any(r["timed_out"] for r in rows)
    out["clients_cut_off"] = max(r["clients_cut_off"] for r in rows)
    return out


def ratios(floor: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    def ratio(key: str) -> float | None:
        a, b = ours.get(key), floor.get(key)
        if not a or not b:
            return None
        return round(a / b, 2)

    out = {
        "workload": "W7",
        "target": "sessionvisor/floor",
        "events_per_s": ratio("events_per_s"),
        "latency_p50_ms": ratio("latency_p50_ms"),
        "latency_p99_ms": ratio("latency_p99_ms"),
        "rss_per_client_bytes": ratio("rss_per_client_bytes"),
        "cpu_us_per_event": ratio("cpu_us_per_event"),
    }
    out["meets_targets"] = bool(
        out["events_per_s"] is not None
        and out["events_per_s"] >= 0.5
        and out["latency_p99_ms"] is not None
        and out["latency_p99_ms"] <= 2.0
    )
    return out


def table(rows: list[dict[str, Any]]) -> str:
    keys = [
        "events_per_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "rss_per_client_bytes",
        "cpu_us_per_event",
    ]
    lines = [
        "| target | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for row in rows:
        lines.append(f"| {row['target']} | " + " | ".join(str(row.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000, help="SSE clients (default 1000)")
    ap.add_argument("--deltas", type=int, default=200, help="deltas per conversation (200)")
    ap.add_argument(
        "--conversations", type=int, default=None, help="conversations (default clients/2)"
    )
    ap.add_argument(
        "--interval", type=float, default=0.0, help="seconds between deltas (default 0)"
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="runs per target, medians reported (default 1)"
    )
    ap.add_argument("--quick", action="store_true", help="N=100, D=50: a few seconds")
    ap.add_argument("--targets", default=",".join(TARGETS), help="floor,sessionvisor")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--serve", choices=TARGETS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.deltas, args.interval)
        return 0
    if args.quick:
        args.clients, args.deltas = min(args.clients, 100), min(args.deltas, 50)
    if args.clients < 1 or args.deltas < 1 or args.repeat < 1:
        raise SystemExit("--clients, --deltas and --repeat must be >= 1")
    args.conversations = args.conversations or max(1, args.clients // 2)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise SystemExit(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
    raise_fd_limit()
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    for rep in range(args.repeat):
        # Alternate the order, so neither target always runs on a warmer (or busier) machine.
        for target in targets if rep % 2 == 0 else targets[::-1]:
            row = asyncio.run(run_target(args, target))
            row["repetition"] = rep + 1
            runs[target].append(row)
            print(json.dumps(row), flush=True)
    rows = [median_row(runs[t]) for t in targets]
    by_target = {r["target"]: r for r in rows}
    if "floor" in by_target and "sessionvisor" in by_target:
        rows.append(ratios(by_target["floor"], by_target["sessionvisor"]))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            # Every run; then, with repetitions, the medians; then the ratios.
            each = [r for t in targets for r in runs[t]] if args.repeat > 1 else []
            for row in [*each, *rows]:
                f.write(json.dumps(row) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
