"""The benchmark workloads W1-W6 (docs/performance.md) against sessionvisor, by its public API.

Everything a benchmark process needs lives here: the sizes, the agent and the
factory, a request/reply client built on a subscription, the six workloads, the
worker entry point (one workload in one fresh process), the subprocess runner
and the tables. ``run.py``, ``peers.py``, ``plot.py`` and ``profile_hot.py``
are thin commands on top.

How a request/reply is made (the public mechanism, chosen as the cheapest honest
one): a client opens ``sup.subscribe(cid)`` once per conversation, then each
request is ``await sup.send(cid, text)`` followed by reading that subscription
until the assistant's ``MessageAppended`` arrives: the moment a user would see
the reply. ``send`` returns once the user message is accepted and persisted
(``turn_start``); the completion save may still be in flight when the reply
event is read, exactly as a client of the runtime would experience it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import structlog

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6")
STORES = ("memory", "sqlite")  # what run.py runs unless told otherwise
#: Every store a run can name; "postgres" needs the server of SVBENCH_POSTGRES_DSN.
ALL_STORES = ("memory", "sqlite", "postgres")
PEERS_DIR = BENCH_DIR / "peers"
POSTGRES_DSN = os.environ.get("SVBENCH_POSTGRES_DSN", "postgresql://root@127.0.0.1:5432/test")


# --------------------------------------------------------------------------- sizes


@dataclasses.dataclass
class Sizes:
    """How big each workload is. The defaults are BENCHMARKS.md's, except where noted."""

    n1: int = 10_000  # W1: conversations cold-started
    w2_calls: int = 5_000  # W2: turns per repetition, history kept bounded (BENCHMARKS: 100k)
    w2_reps: int = 3  # W2: repetitions (median reported)
    w2_keep: int = 8  # W2/W4: messages the bounded agent keeps
    w2_growing_calls: int = 5_000  # W2 variant: turns with an unbounded history (10,000 messages)
    w3_sessions: int = 1_000  # W3: live sessions
    w3_msgs: int = 20  # W3: messages per session (BENCHMARKS.md: 100; see docs)
    w4_crashes: int = 1_000  # W4: crashes (median reported)
    w5_subscribers: int = 1_000  # W5: subscribers of one session
    w5_events: int = 1_000  # W5: Delta events streamed by one turn
    w5_reps: int = 2  # W5: runs of each variant (median reported)
    w6_messages: int = 1_000  # W6: messages in the stored conversation
    w6_reps: int = 10  # W6: conversations woken (median reported)

    @classmethod
    def quick(cls) -> Sizes:
        """Small enough that both stores together take well under a minute."""
        return cls(
            n1=500,
            w2_calls=500,
            w2_reps=3,
            w2_growing_calls=100,
            w3_sessions=100,
            w3_msgs=10,
            w4_crashes=50,
            w5_subscribers=100,
            w5_events=300,  # > subscriber_buffer (256), so the stalled subscriber is cut off
            w5_reps=1,
            w6_messages=1_000,
            w6_reps=3,
        )


def add_size_flags(ap: Any) -> None:
    """Add one ``--name`` flag per ``Sizes`` field (default: unset, i.e. the preset's)."""
    for f in dataclasses.fields(Sizes):
        ap.add_argument(
            "--" + f.name.replace("_", "-"),
            type=int,
            default=None,
            dest=f.name,
            help=f"(default {f.default}; --quick: {getattr(Sizes.quick(), f.name)})",
        )


def sizes_from_args(args: Any) -> Sizes:
    sizes = Sizes.quick() if args.quick else Sizes()
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Sizes)
        if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(sizes, **overrides)


# --------------------------------------------------------------------------- measurement


def rss_bytes(field: str = "VmRSS") -> int:
    """VmRSS (or VmHWM, the peak) of this process, from /proc/self/status (the peers' method)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found")


def settle_rss() -> int:
    gc.collect()
    gc.collect()
    return rss_bytes()


now_ns = time.perf_counter_ns


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100.0 * (len(xs) - 1))))
    return xs[k]


class _Measured:
    """The section a workload times; ``profile_hot.py`` replaces ``factory`` to profile it."""

    factory: Callable[[], AbstractContextManager[Any]] = nullcontext


def measured() -> AbstractContextManager[Any]:
    return _Measured.factory()


def quiet_logging() -> None:
    """Logging off, as in the peers (Erlang crash reports off, pykka at CRITICAL)."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        cache_logger_on_first_use=True,
    )
    logging.disable(logging.CRITICAL)


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- agent, factory

quiet_logging()

from sessionvisor import (  # noqa: E402 - logging is configured before the runtime loads
    Delta,
    Done,
    MemoryStore,
    Message,
    MessageAppended,
    Restarted,
    SessionSupervisor,
    Shutdown,
    SingleRouter,
    SQLiteStore,
    State,
    Status,
    StatusChanged,
    SubscriberOverflow,
    SupervisorOpts,
)
from sessionvisor.state import StoredConversation, dump_state  # noqa: E402


class Crash(Exception):
    """What the W4 agent raises on a ``crash`` message."""


class BenchAgent:
    """The no-op agent of the workloads (a minimal ``Agent``: one async ``run``).

    The runtime appends the user's message to the history; the agent replies
    ``"<last user text>:<history length>"``. With ``keep`` it keeps only the
    last ``keep`` messages, so the state stays the same size turn after turn.
    ``crash`` raises; ``stream:N`` streams N ``Delta`` events ``"0"``..``"N-1"``,
    passing one checkpoint after each (as a model streaming over a socket would).
    """

    __slots__ = ("keep",)

    def __init__(self, keep: int | None) -> None:
        self.keep = keep

    async def run(self, turn: Any) -> Done:
        state = turn.state
        messages = state.messages
        text = messages[-1].content if messages else ""
        if text == "crash":
            raise Crash("crash requested")
        if text.startswith("stream:"):
            for k in range(int(text[7:])):
                turn.delta(str(k))
                await anyio.lowlevel.checkpoint()
            return Done(state, reply="streamed")
        n = len(messages)
        keep = self.keep
        if keep is not None and n > keep:
            state = state.model_copy(update={"messages": messages[-keep:]})
        return Done(state, reply=f"{text}:{n}")


class BenchFactory:
    """One fresh agent per conversation; ids starting with ``grow`` get an unbounded history."""

    __slots__ = ("calls", "keep")

    def __init__(self, keep: int | None = None) -> None:
        self.keep = keep
        self.calls = 0

    def create_agent(self, agent_id: str, config: Any) -> BenchAgent:
        self.calls += 1
        if config["conversation_id"].startswith("grow"):
            return BenchAgent(None)
        return BenchAgent(self.keep)


# --------------------------------------------------------------------------- client


class Client:
    """One conversation as a client sees it: one subscription, requests and replies."""

    __slots__ = ("_it", "cid", "restarts", "sup")

    def __init__(self, sup: SessionSupervisor, cid: str) -> None:
        self.sup = sup
        self.cid = cid
        self.restarts = 0

    async def open(self, stack: AsyncExitStack, after: int | None = None) -> Client:
        sub = await stack.enter_async_context(self.sup.subscribe(self.cid, after=after))
        self._it = sub.__aiter__()
        return self

    async def event(self) -> Any:
        ev = await self._it.__anext__()
        if type(ev) is Restarted:
            self.restarts += 1
        return ev

    async def wait(self, pred: Callable[[Any], bool]) -> Any:
        while True:
            ev = await self.event()
            if pred(ev):
                return ev

    async def reply(self) -> Any:
        it = self._it
        while True:
            ev = await it.__anext__()
            t = type(ev)
            if t is MessageAppended:
                if ev.message.role == "assistant":
                    return ev.message.content
            elif t is Restarted:
                self.restarts += 1

    async def request(self, text: str) -> Any:
        await self.sup.send(self.cid, text)
        return await self.reply()


def is_status(status: Status) -> Callable[[Any], bool]:
    return lambda ev: type(ev) is StatusChanged and ev.status is status


# --------------------------------------------------------------------------- workloads


async def w1(sup: SessionSupervisor, store: Any, sizes: Sizes, stack: AsyncExitStack) -> dict:
    """Cold start of N conversations, each proven ready by one request; RSS per idle session.

    Per conversation: ``send`` (router -> factory -> store load -> fresh state ->
    actor -> turn) then ``subscribe(after=0)``, which replays the events of this
    new conversation, and read up to the reply. Subscribing after the send spares
    a store read a subscription to a not-yet-live conversation would make.

    It runs twice, each time in a fresh process: ``W1`` with ``hibernate_after=None``
    (idle sessions stay unfolded, whatever the length of the run) and
    ``W1-parked`` with ``hibernate_after=0`` (a session folds its state as soon
    as it is idle and nobody subscribes, so what is measured is parked sessions,
    with the memory they free reused by the next ones, as in a long-lived server).
    """
    n = sizes.n1
    warm = await Client(sup, "warm").open(stack)
    await warm.request("ping")  # first-use allocations (imports, caches) are not per session
    rss0 = settle_rss()
    bad = 0
    with measured():
        t0 = now_ns()
        for i in range(n):
            cid = f"conv-{i}"
            await sup.send(cid, "ping")
            async with sup.subscribe(cid, after=0) as sub:
                async for ev in sub:
                    if type(ev) is MessageAppended and ev.message.role == "assistant":
                        if ev.message.content != "ping:1":
                            bad += 1
                        break
            t1 = now_ns()
    await anyio.sleep(0.05)  # let the last completion saves land
    rss1 = settle_rss()
    running = await sup.list_running()
    idle = sum(1 for s in running if s.status is Status.IDLE)
    return {
        "n": n,
        "us_per_start": (t1 - t0) / n / 1e3,
        "bytes_per_session": (rss1 - rss0) / n,
        "rss_before": rss0,
        "rss_after": rss1,
        "live_sessions": len(running) - 1,
        "idle_sessions": idle - 1,
        "wrong_replies": bad,
    }


async def w2(sup: SessionSupervisor, store: Any, sizes: Sizes, stack: AsyncExitStack) -> dict:
    """Sequential request -> reply turns on one live session.

    Main figure: the agent keeps its history at ``w2_keep`` messages, so every turn
    costs the same (the peers' state is an O(1) append). Variant ``growing``: the
    history grows by two messages a turn, as in a real chat; every save writes
    the whole history, so the cost per turn grows with it.
    """
    per = []
    bad = 0
    for rep in range(sizes.w2_reps):
        c = await Client(sup, f"w2-{rep}").open(stack)
        await c.request("warm")
        texts = [str(i) for i in range(sizes.w2_calls)]
        with measured():
            t0 = now_ns()
            for text in texts:
                reply = await c.request(text)
            t1 = now_ns()
        if not reply.startswith(f"{texts[-1]}:"):
            bad += 1
        per.append((t1 - t0) / sizes.w2_calls / 1e3)

    g = sizes.w2_growing_calls
    c = await Client(sup, "grow-w2").open(stack)
    await c.request("warm")
    windows: list[dict] = []
    size = max(1, g // 10)
    with measured():
        t0 = tw = now_ns()
        for i in range(g):
            reply = await c.request(str(i))
            if (i + 1) % size == 0 or i + 1 == g:
                t = now_ns()
                done = (i + 1) - sum(w["turns"] for w in windows)
                windows.append(
                    {
                        "turns": done,
                        "history_at_end": 2 * (i + 2),
                        "us_per_call": (t - tw) / done / 1e3,
                    }
                )
                tw = t
        t1 = now_ns()
    if reply != f"{g - 1}:{2 * g + 1}":
        bad += 1
    return {
        "calls": sizes.w2_calls,
        "history_kept": sizes.w2_keep,
        "reps_us_per_call": per,
        "us_per_call": statistics.median(per),
        "growing": {
            "calls": g,
            "us_per_call": (t1 - t0) / g / 1e3,
            "history_at_end": 2 * (g + 1),
            "windows": windows,
        },
        "wrong_replies": bad,
    }


async def w3(
    sup: SessionSupervisor,
    store: Any,
    sizes: Sizes,
    stack: AsyncExitStack,
    *,
    owner: SessionSupervisor | None = None,
    prefix: str = "grow-w3",
) -> dict:
    """S live sessions, M messages each, sent concurrently; order checked per session.

    ``owner`` (cluster mode) gets each conversation's first message, so it holds
    the conversation, and answers the final check; the messages go through
    ``sup`` and are read on its subscriptions.

    One sender task per session sends its M messages without waiting for replies
    (``send`` returns once the message is accepted and saved); one reader task
    per session reads its subscription. A message sent while a turn runs is
    queued and the queued messages run together as the next turn (the runtime's
    semantics), so ``turns`` is lower than the number of messages. Done when
    every session answered the turn that took its last message.
    """
    s, m = sizes.w3_sessions, sizes.w3_msgs
    first = owner or sup
    clients = [await Client(sup, f"{prefix}-{a}").open(stack) for a in range(s)]
    for c in clients:
        await first.send(c.cid, "warm")
        await c.reply()
    expect = [str(i) for i in range(m)]
    last = expect[-1]
    seen: dict[str, list[str]] = {c.cid: [] for c in clients}
    turns = 0

    async def sender(c: Client) -> None:
        for text in expect:
            await sup.send(c.cid, text)

    async def reader(c: Client) -> None:
        nonlocal turns
        got = seen[c.cid]
        while True:
            ev = await c.event()
            if type(ev) is MessageAppended:
                if ev.message.role == "user":
                    got.append(ev.message.content)
                else:
                    turns += 1
                    if got and got[-1] == last:
                        return

    with measured():
        t0 = now_ns()
        async with anyio.create_task_group() as tg:
            for c in clients:
                tg.start_soon(reader, c)
            for c in clients:
                tg.start_soon(sender, c)
        t1 = now_ns()
    violations = sum(1 for got in seen.values() if got != expect)
    wrong_state = 0
    for c in clients:
        state = await first.load(c.cid)
        users = [msg.content for msg in state.messages if msg.role == "user"][1:]
        if users != expect:
            wrong_state += 1
    total = s * m
    return {
        "sessions": s,
        "msgs_per_session": m,
        "total": total,
        "seconds": (t1 - t0) / 1e9,
        "msgs_per_s": total / ((t1 - t0) / 1e9),
        "turns": turns,
        "order_violations": violations,
        "sessions_with_wrong_final_state": wrong_state,
    }


async def w4(sup: SessionSupervisor, store: Any, sizes: Sizes, stack: AsyncExitStack) -> dict:
    """Crash and restart: from sending ``crash`` to the reply to the next request.

    ``restart_on_error=True`` makes the failed turn crash the actor; the
    supervisor restarts it (router and factory consulted again, state reloaded
    from the store) under a policy that allows any number of restarts. The
    client sends ``crash``, waits for the ``error`` status (its request failed,
    like the peer's exception reply), sends ``ping`` and waits for the reply.
    The agent keeps its history bounded so each reload reads the same amount.
    """
    c = await Client(sup, "w4").open(stack)
    await c.request("warm")
    times = []
    bad = 0
    is_error = is_status(Status.ERROR)
    with measured():
        for k in range(sizes.w4_crashes):
            await c.request(str(k))
            t0 = now_ns()
            await sup.send("w4", "crash")
            await c.wait(is_error)
            reply = await c.request("ping")
            t1 = now_ns()
            times.append(t1 - t0)
            if not reply.startswith("ping:"):
                bad += 1
    return {
        "crashes": sizes.w4_crashes,
        "median_us": statistics.median(times) / 1e3,
        "p90_us": pct(times, 90) / 1e3,
        "restarts_observed": c.restarts,
        "wrong_replies": bad,
    }


async def _w5_once(
    sup: SessionSupervisor, cid: str, sizes: Sizes, stalled: bool, stack: AsyncExitStack
) -> dict:
    subs, events = sizes.w5_subscribers, sizes.w5_events
    async with AsyncExitStack() as warm_stack:  # this subscription closes before the run
        await (await Client(sup, cid).open(warm_stack)).request("warm")
    ready = 0
    all_ready = anyio.Event()
    done_at: list[int] = []
    short = 0

    async def subscriber() -> None:
        nonlocal ready, short
        async with sup.subscribe(cid) as sub:
            ready += 1
            if ready == subs:
                all_ready.set()
            want = 0
            async for ev in sub:
                if type(ev) is Delta:
                    if ev.text != str(want):
                        short += 1
                        return
                    want += 1
                    if want == events:
                        done_at.append(now_ns())
                        return
        short += 1

    stall = None
    if stalled:
        stall = await stack.enter_async_context(sup.subscribe(cid))  # never read
    async with anyio.create_task_group() as tg:
        for _ in range(subs):
            tg.start_soon(subscriber)
        await all_ready.wait()
        t0 = now_ns()
        await sup.send(cid, f"stream:{events}")
    seconds = (max(done_at) - t0) / 1e9 if done_at else float("nan")
    out = {
        "events_per_s": subs * events / seconds,
        "seconds": seconds,
        "subscribers_complete": len(done_at),
        "subscribers_lost_events": short,
    }
    if stall is not None:
        # What the stalled subscriber finds when it finally reads: the events its
        # buffer held, then SubscriberOverflow if it was cut off.
        held = 0
        out["stalled_cut_off"] = False
        try:
            with anyio.move_on_after(0.2):
                async for _ in stall:
                    held += 1
        except SubscriberOverflow:
            out["stalled_cut_off"] = True
        out["stalled_events_held"] = held
    return out


async def w5(sup: SessionSupervisor, store: Any, sizes: Sizes, stack: AsyncExitStack) -> dict:
    """One session streams E deltas to S subscribers; then again with one stalled subscriber.

    Each subscriber is a task reading its own subscription; the figure is
    S * E / (time from send to the last subscriber's last delta). The stalled
    variant adds one subscription nobody reads; the others' rate is compared
    with the run without it (runs alternate; medians).
    """
    plain, stalled = [], []
    for rep in range(sizes.w5_reps):
        # Alternate which variant goes first, so a drift in the machine's speed
        # does not always favour the same one.
        for variant in ("plain", "stalled") if rep % 2 == 0 else ("stalled", "plain"):
            runs = plain if variant == "plain" else stalled
            cid = f"w5-{variant}-{rep}"
            runs.append(await _w5_once(sup, cid, sizes, variant == "stalled", stack))
    rate = statistics.median(r["events_per_s"] for r in plain)
    rate_stalled = statistics.median(r["events_per_s"] for r in stalled)
    return {
        "subscribers": sizes.w5_subscribers,
        "events": sizes.w5_events,
        "events_per_s": rate,
        "events_per_s_with_stalled": rate_stalled,
        "stalled_ratio": rate_stalled / rate,
        "lost_by_readers": sum(r["subscribers_lost_events"] for r in plain + stalled),
        "stalled_cut_off": all(r["stalled_cut_off"] for r in stalled),
        "runs": {"plain": plain, "stalled": stalled},
    }


def _w6_state(n: int) -> State:
    pad = "lorem ipsum dolor sit amet, consectetur adipiscing elit"
    return State(
        messages=[
            Message(role="user" if k % 2 == 0 else "assistant", content=f"message {k}: {pad}")
            for k in range(n)
        ]
    )


async def w6(sup: SessionSupervisor, store: Any, sizes: Sizes, stack: AsyncExitStack) -> dict:
    """Wake from the store: ms from ``send`` to the first event of a conversation of M messages.

    Each conversation is written to the store (M messages of ~70 characters),
    started, and left to stop for inactivity (``Shutdown(reason="inactivity")``,
    seen on a subscription opened before). Then one message is sent and the
    same subscription times the first event (the woken session's status), the
    user's message appearing, and the reply.
    """
    record = StoredConversation(state=dump_state(_w6_state(sizes.w6_messages)))
    first, user, reply, returned = [], [], [], []
    for r in range(sizes.w6_reps):
        cid = f"w6-{r}"
        await store.save(cid, record, expected_version=None, lifecycle="completion")
        c = await Client(sup, cid).open(stack)
        await sup.start(cid)
        with anyio.fail_after(30):
            await c.wait(lambda ev: type(ev) is Shutdown)
        marks: dict[str, int] = {}

        async def reader(c: Client = c, marks: dict[str, int] = marks) -> None:
            # Its own task, as a browser's event stream would be: it sees each event
            # when it is published, not when the sender's call returns.
            await c.event()
            marks["first"] = now_ns()
            await c.wait(lambda ev: type(ev) is MessageAppended and ev.message.role == "user")
            marks["user"] = now_ns()
            await c.reply()
            marks["reply"] = now_ns()

        with anyio.fail_after(30), measured():
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await anyio.lowlevel.checkpoint()  # the reader is waiting on its subscription
                t0 = now_ns()
                await sup.send(cid, "wake")
                marks["returned"] = now_ns()
        first.append((marks["first"] - t0) / 1e6)
        user.append((marks["user"] - t0) / 1e6)
        reply.append((marks["reply"] - t0) / 1e6)
        returned.append((marks["returned"] - t0) / 1e6)
    return {
        "messages": sizes.w6_messages,
        "reps": sizes.w6_reps,
        "ms_first_event": statistics.median(first),
        "ms_send_returned": statistics.median(returned),
        "ms_user_message": statistics.median(user),
        "ms_reply": statistics.median(reply),
        "ms_first_event_max": max(first),
    }


WORKLOAD_FUNCS: dict[str, Callable[..., Awaitable[dict]]] = {
    "W1": w1,
    "W1-parked": w1,
    "W2": w2,
    "W3": w3,
    "W4": w4,
    "W5": w5,
    "W6": w6,
}

# Supervisor options per workload; sessions must stay live (no inactivity stop) except in W6.
BASE_OPTS: dict[str, Any] = {"inactivity_timeout": 86_400.0}
HAS_HIBERNATE = "hibernate_after" in SupervisorOpts.field_names()
WORKLOAD_OPTS: dict[str, dict[str, Any]] = {
    "W1": {"hibernate_after": None} if HAS_HIBERNATE else {},
    "W1-parked": {"hibernate_after": 0.0},
    "W2": {},
    # A client that sends its 100 messages without waiting: room for them in the queue
    # and in its subscription (the reader keeps up, but bursts are 2 events per message).
    "W3": {"max_queued": 10_000, "subscriber_buffer": 4_096},
    "W4": {"restart_on_error": True, "max_restarts": 10**9, "max_seconds": 5.0},
    "W5": {},  # default subscriber_buffer: the stalled subscriber is cut off by it
    "W6": {"inactivity_timeout": 0.2},
}


# --------------------------------------------------------------------------- worker


async def run_workload(workload: str, store_kind: str, sizes: Sizes, db_dir: str) -> dict:
    """Run one workload on a fresh supervisor and store (call it in a fresh process)."""
    if store_kind == "postgres":
        async with postgres_database() as dsn:
            from sessionvisor.state.postgres import PostgresStore

            return await _run_workload(workload, PostgresStore(dsn), sizes)
    store: Any = MemoryStore() if store_kind == "memory" else SQLiteStore(Path(db_dir) / "b.db")
    return await _run_workload(workload, store, sizes)


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """Create a database of its own on the bench's server, yield its DSN, drop it."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"svbench_{os.getpid()}_{time.time_ns() % 10**9}"

    def admin(statement: str) -> None:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    await anyio.to_thread.run_sync(admin, f"CREATE DATABASE {name}")
    try:
        yield make_conninfo(**{**conninfo_to_dict(POSTGRES_DSN), "dbname": name})
    finally:
        await anyio.to_thread.run_sync(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def _run_workload(workload: str, store: Any, sizes: Sizes) -> dict:
    opts = {**BASE_OPTS, **WORKLOAD_OPTS[workload]}
    factory = BenchFactory(keep=sizes.w2_keep)
    sup = SessionSupervisor(SingleRouter(factory), store=store, supervisor_opts=opts)
    async with store:
        stack = AsyncExitStack()
        async with stack:
            await stack.enter_async_context(sup)
            result = await WORKLOAD_FUNCS[workload](sup, store, sizes, stack)
            t_drain = now_ns()
        result["drain_s"] = (now_ns() - t_drain) / 1e9
        result["rss_peak"] = rss_bytes("VmHWM")  # the drain's peak included
        result["factory_calls"] = factory.calls
    return result


def git_revision() -> str:
    """The commit the runtime was measured at, with ``+dirty`` when src/ has local changes.

    ``SVBENCH_REVISION`` overrides it, for a run against a snapshot of src/ put
    first on ``PYTHONPATH`` (see docs/performance.md).
    """
    if os.environ.get("SVBENCH_REVISION"):
        return os.environ["SVBENCH_REVISION"]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def versions() -> dict:
    import importlib.metadata as md

    import sessionvisor

    out = {
        "python": platform.python_version(),
        "git": git_revision(),
        "sessionvisor_src": str(Path(sessionvisor.__file__).resolve().parent),
    }
    for name in ("sessionvisor", "anyio", "trio", "pydantic", "structlog"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def worker(workload: str, store_kind: str, backend: str, sizes: Sizes) -> dict:
    with tempfile.TemporaryDirectory(prefix="svbench-") as tmp:
        t0 = time.perf_counter()
        figures = anyio.run(run_workload, workload, store_kind, sizes, tmp, backend=backend)
        wall = time.perf_counter() - t0
    return {
        "workload": workload,
        "store": store_kind,
        "backend": backend,
        **figures,
        "sizes": dataclasses.asdict(sizes),
        "wall_s": round(wall, 3),
        "versions": versions(),
    }


def spawn_workload(
    workload: str, store_kind: str, backend: str, sizes: Sizes, *, timeout: float
) -> dict:
    """Run one workload (W1 twice: awake, then parked) and return its JSON object."""
    result = spawn_worker(workload, store_kind, backend, sizes, timeout=timeout)
    if workload == "W1" and HAS_HIBERNATE and "error" not in result:
        parked = spawn_worker("W1-parked", store_kind, backend, sizes, timeout=timeout)
        if "error" in parked:
            result["parked_error"] = parked["error"]
        else:
            for key in ("us_per_start", "bytes_per_session", "rss_peak", "drain_s"):
                result[key + "_parked"] = parked[key]
    return result


def spawn_worker(
    workload: str, store_kind: str, backend: str, sizes: Sizes, *, timeout: float
) -> dict:
    """Run one workload in a fresh interpreter (clean RSS) and return its JSON object."""
    cmd = [
        sys.executable,
        str(BENCH_DIR / "run.py"),
        "--worker",
        workload,
        "--stores",
        store_kind,
        "--backend",
        backend,
        "--sizes-json",
        json.dumps(dataclasses.asdict(sizes)),
    ]
    base = {"workload": workload, "store": store_kind, "backend": backend}
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, text=True, timeout=timeout, cwd=REPO_DIR, check=False
        )
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**base, "error": f"worker exited with {proc.returncode} (see stderr)"}
    return json.loads(lines[-1])


def run_peer_raw_anyio(
    peers_dir: Path, backend: str, sizes: Sizes, *, timeout: float, only: str = "w1,w2,w3,w4"
) -> dict:
    """Run ``raw_anyio.py`` (fresh process) with our sizes; return its JSON result."""
    cmd = [
        sys.executable,
        str(peers_dir / "raw_anyio.py"),
        "--backend",
        backend,
        "--n1",
        str(sizes.n1),
        "--w2-calls",
        str(sizes.w2_calls),
        "--w2-reps",
        str(sizes.w2_reps),
        "--w3-actors",
        str(sizes.w3_sessions),
        "--w3-msgs",
        str(sizes.w3_msgs),
        "--w4-crashes",
        str(sizes.w4_crashes),
        "--only",
        only,
    ]
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, text=True, timeout=timeout, cwd=REPO_DIR, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"peer timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": f"peer exited with {proc.returncode} (see stderr)"}
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------- tables


def _num(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int) or abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def headline(r: dict) -> str:
    """The figures of one result, as one readable cell."""
    if "error" in r:
        return "ERROR: " + r["error"]
    w = r["workload"]
    if w == "W1":
        text = (
            f"{_num(r['us_per_start'])} µs/start, {_num(r['bytes_per_session'])} B/session "
            f"(N={_num(r['n'])}, drain {_num(r['drain_s'], 2)} s)"
        )
        if "bytes_per_session_parked" in r:
            text += (
                f"; parked: {_num(r['us_per_start_parked'])} µs/start, "
                f"{_num(r['bytes_per_session_parked'])} B/session"
            )
        return text
    if w == "W2":
        g = r["growing"]
        return (
            f"{_num(r['us_per_call'])} µs/call (history ≤{r['history_kept']}, "
            f"{_num(r['calls'])}x{len(r['reps_us_per_call'])}); growing history: "
            f"{_num(g['us_per_call'])} µs/call over {_num(g['calls'])} turns, "
            f"last window {_num(g['windows'][-1]['us_per_call'])} µs"
        )
    if w == "W3":
        return (
            f"{_num(r['msgs_per_s'])} msg/s ({r['sessions']}x{r['msgs_per_session']}, "
            f"{_num(r['turns'])} turns, order violations {r['order_violations']}, "
            f"wrong final state {r['sessions_with_wrong_final_state']})"
        )
    if w == "W4":
        return (
            f"{_num(r['median_us'])} µs median, p90 {_num(r['p90_us'])} µs "
            f"({r['crashes']} crashes, {r['restarts_observed']} restarts seen)"
        )
    if w == "W5":
        return (
            f"{_num(r['events_per_s'])} events/s ({r['subscribers']}x{r['events']}); with a "
            f"stalled subscriber {_num(r['events_per_s_with_stalled'])} "
            f"(ratio {_num(r['stalled_ratio'], 2)}, cut off: {_num(r['stalled_cut_off'])}, "
            f"lost by readers {r['lost_by_readers']})"
        )
    if w == "W6":
        return (
            f"{_num(r['ms_first_event'], 2)} ms to first event, "
            f"{_num(r['ms_user_message'], 2)} ms to user message, "
            f"{_num(r['ms_reply'], 2)} ms to reply ({_num(r['messages'])} messages)"
        )
    return json.dumps(r)


def results_table(results: list[dict]) -> str:
    lines = ["| workload | store | backend | figures |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['workload']} | {r['store']} | {r['backend']} | {headline(r)} |")
    return "\n".join(lines)


def env_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    v = versions()
    return (
        f"{os.cpu_count()} CPUs ({cpu}); Python {v['python']}, anyio {v.get('anyio')}, "
        f"trio {v.get('trio')}, sessionvisor {v.get('sessionvisor')} at {v['git']}"
    )
