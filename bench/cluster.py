"""Cluster mode beside local mode, in one run: W2/W3 throughput, then failover time.

Everything it needs it starts itself: a redis-server on a free port (no
persistence) and a fresh PostgreSQL database per part on the server of
``SVBENCH_POSTGRES_DSN`` (default ``postgresql://root@127.0.0.1:5432/test``),
dropped at the end.

1. **Throughput** (W2 and W3 as in ``bench/_harness.py``: W2 is sequential
   request -> reply turns on one conversation whose history stays at 8
   messages; W3 is S conversations receiving M messages each, all sent
   without waiting, order checked per conversation):

   - ``local``: one ``SessionSupervisor`` over a ``PostgresStore``: the
     baseline, taken in the same run;
   - ``cluster, to the owner``: three supervisors, each with its own
     ``Cluster(node_id=...)``; the client sends to and reads from the node
     that owns the conversation;
   - ``cluster, via another node``: the same nodes; the conversation is owned
     by node ``n0`` (its first message went there) and the client sends to and
     reads from ``n1``, so every message crosses the inbox and every event the
     Redis stream.

   The nodes run in this process, on one event loop. That is deliberate: each
   node still talks to PostgreSQL and Redis over the network (leases, fencing,
   inbox, streams and wake-ups all take their real path), while the CPU is the
   same one the local baseline had, so the ratio cluster/local is the cost of
   the cluster's protocol, not the gain of more cores. Separate processes
   would add HTTP to the cluster side only and let it use cores the baseline
   could not.

2. **Failover**: two long-lived node processes (``python -m sessionvisor demo
   --store postgresql://... --cluster redis://... --lease-ttl T``) and, for each
   of N rounds, a third node process that receives a message for a new
   conversation over HTTP (202: accepted and stored, the turn starts) and is
   killed with SIGKILL at once, while its turn streams. The figures are the
   times from the kill until a survivor holds the conversation's lease and
   until the answer is in the store (polled every 20 ms with a
   ``PostgresStore`` of the bench's own), with no new request. A killed
   process's connections close, so its advisory lock goes at once and the
   survivors take over without waiting out the lease (target: p99 at most
   1.5 s); the bound is the one without it, ``T + renew_every + 1`` s (the
   CLI's renew_every is T/4). The answer includes running the demo's turn
   again on the new owner; "turn alone" is that turn on a live node, for
   comparison. At the end every conversation must hold exactly one answer.

3. **Pause**: as in 2, but the node is frozen with SIGSTOP instead (it keeps
   its connections, and its lock), ``pauses`` times. A survivor must take
   over only once the frozen owner's lease ran out, on the database's clock
   (its last ``lease_until`` against the new owner's first one minus T); once
   the answer is stored the node gets SIGCONT, and the run waits for it to
   stop its session as superseded. A stale write is any change to the stored
   conversation after that, or an answer count other than one.

    .venv/bin/python bench/cluster.py             # W3 200x20, W2 1,000x3, 20 failovers, 5 pauses
    .venv/bin/python bench/cluster.py --quick     # W3 20x5, W2 100x2, 5 failovers, 2 pauses
    .venv/bin/python bench/cluster.py --skip-failover --w3-sessions 500

Prints one JSON object per figure, then markdown tables.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from _harness import (
    POSTGRES_DSN,
    REPO_DIR,
    BenchFactory,
    Client,
    SessionSupervisor,
    SingleRouter,
    env_line,
    log,
    now_ns,
    pct,
)
from _harness import w3 as harness_w3

USER = "bench"
# W2 and W3's options in the harness, together: sessions never stop for inactivity;
# room for a client that sends all its messages without waiting.
OPTS = {"inactivity_timeout": 86_400.0, "max_queued": 10_000, "subscriber_buffer": 4_096}


@dataclasses.dataclass
class Sizes:
    w2_calls: int = 1_000  # W2: turns per repetition
    w2_reps: int = 3  # W2: repetitions (median reported)
    w2_keep: int = 8  # W2: messages the agent keeps
    w3_sessions: int = 200  # W3: conversations
    w3_msgs: int = 20  # W3: messages per conversation
    nodes: int = 3  # cluster nodes in the throughput part
    failovers: int = 20  # failover rounds (kill -9)
    pauses: int = 5  # pause rounds (SIGSTOP)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(w2_calls=100, w2_reps=2, w3_sessions=20, w3_msgs=5, failovers=5, pauses=2)


# ------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(condition: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.02)


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A redis-server of the bench's own on a free port, keeping nothing on disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench/cluster.py needs redis-server on PATH")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    HangGuard.cleanups.append((proc.kill,))
    try:
        wait_for(lambda: port_open(port), f"redis-server listens on {port}", 10)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        HangGuard.cleanups.remove((proc.kill,))
        proc.terminate()
        proc.wait(10)


@contextmanager
def postgres_database(label: str) -> Iterator[str]:
    """A database created for this run on the bench's server; yields its URL, drops it."""
    import psycopg

    name = f"svbench_cluster_{label}_{uuid.uuid4().hex[:8]}"

    def admin(statement: str) -> None:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    admin(f"CREATE DATABASE {name}")
    drop = (admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    HangGuard.cleanups.append(drop)
    try:
        yield urllib.parse.urlunsplit(urllib.parse.urlsplit(POSTGRES_DSN)._replace(path=name))
    finally:
        HangGuard.cleanups.remove(drop)
        admin(*drop[1:])


def lease_owners(dsn: str, prefix: str, *, exact: bool = False) -> dict[str, int]:
    """How many conversations whose id starts with ``prefix`` (or is it) each node holds."""
    import psycopg

    pattern = prefix if exact else prefix.replace("_", r"\_") + "%"
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT node_id, count(*) FROM sessionvisor_leases "
            "WHERE conversation_id LIKE %s GROUP BY node_id",
            (pattern,),
        ).fetchall()
    return {str(node): int(n) for node, n in rows}


# ------------------------------------------------------------------ throughput


class HangGuard:
    """Ends the run with the asyncio tasks' stacks if one part goes on past ``seconds``.

    A send or a reply that never comes would otherwise hang the benchmark (and a
    supervisor waiting on it may not leave on cancellation either), so a thread
    watches the clock: it prints every task's stack to stderr, stops the
    bench's redis-server, drops its databases and exits with status 3.
    """

    cleanups: list[Any] = []  # what to undo before exiting: (callable, args)

    def __init__(self, what: str, seconds: float, loop: Any) -> None:
        self.what = what
        self.loop = loop
        self.timer = threading.Timer(seconds, self._fire, args=(seconds,))
        self.timer.daemon = True

    def __enter__(self) -> HangGuard:
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()

    def _fire(self, seconds: float) -> None:
        import asyncio

        log(f"[cluster] {self.what}: still running after {seconds:g} s; the tasks:")
        for task in list(asyncio.all_tasks(self.loop)):
            log(f"---- {task.get_name()}")
            for where in awaiting(task.get_coro()):
                log(f"    {where}")
        for undo, *args in reversed(HangGuard.cleanups):
            try:
                undo(*args)
            except Exception as exc:  # best effort on the way out
                log(f"[cluster] cleanup {undo.__name__}: {exc!r}")
        sys.stderr.flush()
        os._exit(3)


def awaiting(coro: Any) -> list[str]:
    """Where a suspended coroutine waits: each frame down its chain of awaits."""
    out = []
    while coro is not None and len(out) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        frame = frame or getattr(coro, "ag_frame", None)
        if frame is not None:
            out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "gi_yieldfrom", None)
            or getattr(coro, "ag_await", None)
        )
    return out


def guard(what: str, seconds: float) -> HangGuard:
    import asyncio

    return HangGuard(what, seconds, asyncio.get_running_loop())


@asynccontextmanager
async def supervisors(dsn: str, redis_url: str | None, sizes: Sizes) -> AsyncIterator[list[Any]]:
    """One local supervisor (``redis_url`` None) or ``sizes.nodes`` cluster nodes."""
    from sessionvisor.cluster import Cluster
    from sessionvisor.state.postgres import PostgresStore

    async with AsyncExitStack() as stack:
        sups = []
        count = 1 if redis_url is None else sizes.nodes
        for i in range(count):
            store = await stack.enter_async_context(PostgresStore(dsn))
            cluster = None if redis_url is None else Cluster(redis_url, node_id=f"n{i}")
            sup = SessionSupervisor(
                SingleRouter(BenchFactory(keep=sizes.w2_keep)),
                store=store,
                supervisor_opts=OPTS,
                cluster=cluster,
            )
            sups.append(await stack.enter_async_context(sup))
        yield sups


async def warm(owner: Any, client: Client) -> None:
    """The conversation's first message goes to ``owner`` (which takes its lease);
    the reply is read on the client's own subscription, on whichever node."""
    await owner.send(client.cid, "warm")
    await client.reply()


async def w2(owner: Any, via: Any, sizes: Sizes, label: str) -> dict[str, Any]:
    """Sequential request -> reply on one conversation (history kept at w2_keep)."""
    per: list[float] = []
    bad = 0
    for rep in range(sizes.w2_reps):
        async with AsyncExitStack() as stack:
            c = await Client(via, f"w2-{label}-{rep}").open(stack)
            await warm(owner, c)
            texts = [str(i) for i in range(sizes.w2_calls)]
            t0 = now_ns()
            for text in texts:
                await via.send(c.cid, text)
                reply = await c.reply()
            t1 = now_ns()
        if not reply.startswith(f"{texts[-1]}:"):
            bad += 1
        per.append((t1 - t0) / sizes.w2_calls / 1e3)
    us = statistics.median(per)
    return {
        "workload": "W2",
        "calls": sizes.w2_calls,
        "reps_us_per_call": [round(x, 1) for x in per],
        "us_per_call": round(us, 1),
        "turns_per_s": round(1e6 / us, 1),
        "wrong_replies": bad,
    }


async def w3(owner: Any, via: Any, sizes: Sizes, label: str) -> dict[str, Any]:
    """The harness's W3, the messages sent through ``via`` to conversations ``owner`` holds."""
    async with AsyncExitStack() as stack:
        # "grow" ids: the harness's agent keeps the whole history, as in its W3.
        found = await harness_w3(via, None, sizes, stack, owner=owner, prefix=f"grow-w3-{label}")
    return {
        "workload": "W3",
        "sessions": found["sessions"],
        "msgs_per_session": found["msgs_per_session"],
        "seconds": round(found["seconds"], 3),
        "msgs_per_s": round(found["msgs_per_s"], 1),
        "turns": found["turns"],
        "order_violations": found["order_violations"],
        "sessions_with_wrong_final_state": found["sessions_with_wrong_final_state"],
    }


async def throughput(redis_url: str, sizes: Sizes, limit: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with postgres_database("local") as dsn:
        async with supervisors(dsn, None, sizes) as (sup,):
            for name, workload in (("W2", w2), ("W3", w3)):
                log(f"[cluster] local: {name} ...")
                with guard(f"local {name}", limit):
                    rows.append({"mode": "local", **await workload(sup, sup, sizes, "local")})
    with postgres_database("nodes") as dsn:
        async with supervisors(dsn, redis_url, sizes) as sups:
            for mode, label, via in (
                ("cluster, to the owner", "owner", sups[0]),
                ("cluster, via another node", "other", sups[1]),
            ):
                for name, workload in (("W2", w2), ("W3", w3)):
                    log(f"[cluster] {mode}: {name} ...")
                    with guard(f"{mode} {name}", limit):
                        row = await workload(sups[0], via, sizes, label)
                    # Who held the leases of this part's conversations once it ran: n0 only.
                    prefix = ("w2-" if name == "W2" else "grow-w3-") + label
                    row["leases"] = lease_owners(dsn, prefix)
                    rows.append({"mode": mode, "nodes": len(sups), **row})
    return rows


def ratio_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["mode"], r["workload"]): r for r in rows}
    out = []
    for mode in ("cluster, to the owner", "cluster, via another node"):
        for workload, key in (("W2", "turns_per_s"), ("W3", "msgs_per_s")):
            local, cluster = by.get(("local", workload)), by.get((mode, workload))
            if local and cluster and local.get(key):
                out.append(
                    {
                        "ratio": f"{mode} / local",
                        "workload": workload,
                        key: round(cluster[key] / local[key], 3),
                    }
                )
    return out


# ------------------------------------------------------------------ failover


class Node:
    """A ``python -m sessionvisor demo`` node process; its output is drained by a thread."""

    def __init__(self, dsn: str, redis_url: str, node_id: str, lease_ttl: float, delay: float):
        self.node_id = node_id
        self.port = free_port()
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        command = [sys.executable, "-m", "sessionvisor", "demo", "--store", dsn]
        command += ["--cluster", redis_url, "--lease-ttl", str(lease_ttl), "--node-id", node_id]
        command += ["--port", str(self.port), "--word-delay", str(delay)]
        command += ["--log-level", "warning", "--inactivity-timeout", "none"]
        env = {**os.environ, "PYTHONPATH": str(REPO_DIR / "src"), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            command,
            cwd=REPO_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.serving = threading.Event()
        # It logged a lease lost or a session stopped as superseded.
        self.superseded = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line.rstrip())
            if "open http://" in line:
                self.serving.set()
            if "superseded" in line or "cluster_lease_lost" in line:
                self.superseded.set()

    def wait_serving(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.serving.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"node {self.node_id} did not start (exit {self.proc.poll()}):\n"
                    + "\n".join(self.tail)
                )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def terminate(self) -> int:
        """SIGTERM (a drain); the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9


def answers(record: Any) -> int:
    if record is None:
        return 0
    return sum(1 for m in record.state.get("messages", []) if m.get("role") == "assistant")


class LeaseWatch:
    """Reads a conversation's lease holder on one connection of its own."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True)

    def holder(self, cid: str) -> str | None:
        row = self.row(cid)
        return None if row is None else row[0]

    def row(self, cid: str) -> tuple[str, Any] | None:
        """The holder and its ``lease_until`` (the database's clock)."""
        row = self.conn.execute(
            "SELECT node_id, lease_until FROM sessionvisor_leases WHERE conversation_id = %s",
            (cid,),
        ).fetchone()
        return None if row is None else (str(row[0]), row[1])

    def close(self) -> None:
        self.conn.close()


async def watch(
    store: Any, leases: LeaseWatch | None, cid: str, gone: str | None, since: float, timeout: float
) -> tuple[float | None, float | None]:
    """Poll every 20 ms from ``since`` (monotonic): seconds until a node other than
    ``gone`` holds ``cid``'s lease, and until its answer is in the store."""
    deadline = since + timeout
    taken = answered = None
    while answered is None and time.monotonic() < deadline:
        if taken is None and leases is not None:
            holder = await anyio.to_thread.run_sync(leases.holder, cid)
            if holder is not None and holder != gone:
                taken = time.monotonic() - since
        if answers(await store.load(cid)) > 0:
            answered = time.monotonic() - since
        else:
            await anyio.sleep(0.02)
    return taken, answered


async def post(client: Any, node: Node, cid: str, text: str) -> None:
    sent = await client.post(
        f"{node.url}/conversations/{cid}/messages",
        json={"content": text},
        headers={"X-User": USER},
    )
    if sent.status_code != 202:
        raise RuntimeError(f"POST to {node.node_id} answered {sent.status_code}: {sent.text}")


def spread(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50_s": None, "p99_s": None, "max_s": None}
    return {
        "p50_s": round(pct(xs, 50), 3),
        "p99_s": round(pct(xs, 99), 3),
        "max_s": round(max(xs), 3),
    }


async def pause_round(
    i: int,
    dsn: str,
    redis_url: str,
    lease_ttl: float,
    delay: float,
    store: Any,
    client: Any,
    leases: LeaseWatch,
) -> dict[str, Any]:
    """SIGSTOP the owner just after its message was stored; a survivor takes over once
    the lease ran out; SIGCONT; whatever the woken owner does must not be stored."""
    import datetime

    victim = Node(dsn, redis_url, f"paused-{i}", lease_ttl, delay)
    cid = f"pause-{i}"
    row: dict[str, Any] = {"round": i}
    try:
        await anyio.to_thread.run_sync(victim.wait_serving)
        await post(client, victim, cid, "hello")
        victim.proc.send_signal(signal.SIGSTOP)
        t_stop = time.monotonic()
        last_until = None
        taken_at = None
        while time.monotonic() < t_stop + lease_ttl * 3 + 30:
            found = await anyio.to_thread.run_sync(leases.row, cid)
            if found is not None and found[0] == victim.node_id:
                last_until = found[1] if last_until is None else max(last_until, found[1])
            elif found is not None:
                taken_at = found[1] - datetime.timedelta(seconds=lease_ttl)
                row["takeover_s"] = time.monotonic() - t_stop
                row["new_holder"] = found[0]
                break
            await anyio.sleep(0.02)
        row["taken_before_lease_ended"] = (
            taken_at is not None and last_until is not None and taken_at < last_until
        )
        _, answered = await watch(store, None, cid, None, t_stop, lease_ttl * 3 + 30)
        row["answer_s"] = answered
        before = await store.load(cid)
        victim.proc.send_signal(signal.SIGCONT)
        row["superseded_logged"] = await anyio.to_thread.run_sync(victim.superseded.wait, 30)
        if not row["superseded_logged"]:
            row["victim_log"] = list(victim.tail)[-10:]
        after = await store.load(cid)
        changed = (before is None) != (after is None) or (
            before is not None and after is not None and before.version != after.version
        )
        row["stale_writes"] = int(changed) + int(answers(after) != 1)
    finally:
        victim.kill()
    return row


async def failover(
    dsn: str, redis_url: str, sizes: Sizes, lease_ttl: float, delay: float
) -> dict[str, Any]:
    import httpx

    from sessionvisor.state.postgres import PostgresStore

    bound = lease_ttl + lease_ttl / 4 + 1.0
    survivors = [Node(dsn, redis_url, name, lease_ttl, delay) for name in ("a", "b")]
    takeover: list[float] = []
    answer: list[float] = []
    turn_alone: list[float] = []
    rounds: list[dict[str, Any]] = []
    cids: list[str] = []
    drained: list[int] = []
    pauses: list[dict[str, Any]] = []
    leases: LeaseWatch | None = None
    try:
        for node in survivors:
            await anyio.to_thread.run_sync(node.wait_serving)
        leases = LeaseWatch(dsn)
        async with PostgresStore(dsn) as store, httpx.AsyncClient(timeout=30) as client:
            # The demo's turn on a live node, from the POST to the answer in the store.
            for k in range(3):
                cid = f"alone-{k}"
                cids.append(cid)
                t0 = time.monotonic()
                await post(client, survivors[k % 2], cid, "hello")
                _, took = await watch(store, None, cid, None, t0, 30)
                if took is not None:
                    turn_alone.append(took)
            for i in range(sizes.failovers):
                victim = Node(dsn, redis_url, f"victim-{i}", lease_ttl, delay)
                try:
                    await anyio.to_thread.run_sync(victim.wait_serving)
                    cid = f"failover-{i}"
                    cids.append(cid)
                    await post(client, victim, cid, "hello")  # stored, the turn begins
                    victim.proc.kill()
                    t_kill = time.monotonic()
                    await anyio.to_thread.run_sync(victim.proc.wait)
                finally:
                    victim.kill()
                record = await store.load(cid)
                row: dict[str, Any] = {
                    "round": i,
                    "stored": record is not None,
                    "answered_before_kill": answers(record) > 0,
                    "victim_held_lease": leases.holder(cid) == victim.node_id,
                }
                if not row["answered_before_kill"]:
                    taken, answered = await watch(
                        store, leases, cid, victim.node_id, t_kill, bound + 30
                    )
                    row.update(takeover_s=taken, answer_s=answered, new_holder=leases.holder(cid))
                    if taken is not None:
                        takeover.append(taken)
                    if answered is not None:
                        answer.append(answered)
                rounds.append(row)
                log(f"[cluster] failover {i + 1}/{sizes.failovers}: {json.dumps(row)}")
            duplicates = 0
            for cid in cids:
                duplicates += answers(await store.load(cid)) != 1
            for i in range(sizes.pauses):
                row = await pause_round(i, dsn, redis_url, lease_ttl, delay, store, client, leases)
                pauses.append(row)
                log(f"[cluster] pause {i + 1}/{sizes.pauses}: {json.dumps(row)}")
    finally:
        if leases is not None:
            leases.close()
        for node in survivors:
            drained.append(await anyio.to_thread.run_sync(node.terminate))
    alone = statistics.median(turn_alone) if turn_alone else None
    return {
        "part": "failover",
        "rounds": sizes.failovers,
        "lease_ttl": lease_ttl,
        "renew_every": lease_ttl / 4,
        "bound_s": bound,
        "takeover": {**spread(takeover), "measured": len(takeover)},
        "takeover_within_bound": sum(1 for t in takeover if t <= bound),
        "answer": {**spread(answer), "measured": len(answer)},
        "answer_within_bound_plus_turn": (
            sum(1 for t in answer if t <= bound + alone) if alone is not None else None
        ),
        "turn_alone_median_s": None if alone is None else round(alone, 3),
        "answered_before_kill": sum(1 for r in rounds if r["answered_before_kill"]),
        "victim_held_lease": sum(1 for r in rounds if r["victim_held_lease"]),
        "conversations_without_exactly_one_answer": duplicates,
        "survivor_exit_codes_after_sigterm": drained,
        "rounds_detail": rounds,
        "pause": {
            "rounds": sizes.pauses,
            "takeover": {
                **spread([r["takeover_s"] for r in pauses if "takeover_s" in r]),
                "measured": sum(1 for r in pauses if "takeover_s" in r),
            },
            "taken_before_lease_ended": sum(1 for r in pauses if r["taken_before_lease_ended"]),
            "superseded_logged": sum(1 for r in pauses if r["superseded_logged"]),
            "stale_writes": sum(r["stale_writes"] for r in pauses),
            "rounds_detail": pauses,
        },
    }


# ------------------------------------------------------------------ tables


def throughput_table(rows: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    by = {(r["mode"], r["workload"]): r for r in rows}
    ratio = {(r["ratio"].split(" / ")[0], r["workload"]): r for r in ratios}
    modes = ("cluster, to the owner", "cluster, via another node")
    head = "| figure | local | " + " | ".join(f"{m} | ratio" for m in modes) + " |"
    lines = [head, "|---|---|" + "---|---|" * len(modes)]
    for workload, key, label in (
        ("W2", "turns_per_s", "W2 turns/s (one conversation, request -> reply)"),
        ("W3", "msgs_per_s", "W3 messages/s (S x M, sent without waiting)"),
    ):
        local = by.get(("local", workload), {})
        cells = [label, str(local.get(key, "n/a"))]
        for mode in modes:
            cells.append(str(by.get((mode, workload), {}).get(key, "n/a")))
            cells.append(str(ratio.get((mode, workload), {}).get(key, "n/a")))
        lines.append("| " + " | ".join(cells) + " |")
    checks = [
        f"{r['mode']} {r['workload']}: wrong replies {r.get('wrong_replies', 0)}, "
        f"order violations {r.get('order_violations', 0)}, "
        f"wrong final state {r.get('sessions_with_wrong_final_state', 0)}"
        + (f", leases {r['leases']}" if "leases" in r else "")
        for r in rows
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {c}" for c in checks)


def failover_table(row: dict[str, Any]) -> str:
    bound, alone = row["bound_s"], row["turn_alone_median_s"]
    lines = [
        "| from the fault to | measured | p50 s | p99 s | max s | bound s | within bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, key, limit, within in (
        ("kill -9: a survivor holds the lease", "takeover", bound, row["takeover_within_bound"]),
        (
            "kill -9: the answer is in the store",
            "answer",
            None if alone is None else round(bound + alone, 3),
            row["answer_within_bound_plus_turn"],
        ),
    ):
        fig = row[key]
        lines.append(
            f"| {label} | {fig['measured']}/{row['rounds']} | {fig['p50_s']} | {fig['p99_s']} "
            f"| {fig['max_s']} | {limit} | {within} |"
        )
    pause = row["pause"]
    if pause["rounds"]:
        fig = pause["takeover"]
        lines.append(
            f"| SIGSTOP: a survivor holds the lease (after the TTL) | "
            f"{fig['measured']}/{pause['rounds']} | {fig['p50_s']} | {fig['p99_s']} "
            f"| {fig['max_s']} | at least TTL - renew_every = "
            f"{row['lease_ttl'] - row['renew_every']:g} | "
            f"taken before the lease ended: {pause['taken_before_lease_ended']}, "
            f"stale writes: {pause['stale_writes']} |"
        )
    notes = [
        f"bound = lease TTL {row['lease_ttl']:g} + renew_every {row['renew_every']:g} + 1 s; "
        f"for the answer, plus the demo's turn on a live node ({alone} s, median of 3)",
        f"rounds the victim answered before its kill (not measured): "
        f"{row['answered_before_kill']}; rounds the victim held the lease at its kill: "
        f"{row['victim_held_lease']}/{row['rounds']}",
        f"conversations without exactly one answer at the end: "
        f"{row['conversations_without_exactly_one_answer']}; survivors' exit status after "
        f"SIGTERM: {row['survivor_exit_codes_after_sigterm']}",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


# ------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small run (well under a minute)")
    for f in dataclasses.fields(Sizes):
        ap.add_argument(
            "--" + f.name.replace("_", "-"),
            type=int,
            default=None,
            dest=f.name,
            help=f"(default {f.default}; --quick: {getattr(Sizes.quick(), f.name)})",
        )
    ap.add_argument(
        "--lease-ttl", type=float, default=3.0, help="failover nodes' --lease-ttl (default 3)"
    )
    ap.add_argument(
        "--word-delay",
        type=float,
        default=0.01,
        help="failover nodes' --word-delay: the demo's turn lasts ~45 of these (default 0.01)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds one throughput workload may take before the run ends with the "
        "tasks' stacks, exit status 3 (default 300)",
    )
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-failover", action="store_true")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    sizes = dataclasses.replace(
        sizes,
        **{
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(Sizes)
            if getattr(args, f.name) is not None
        },
    )
    if sizes.nodes < 2:
        raise SystemExit("--nodes must be at least 2 (the 'via another node' case needs two)")
    log(f"[cluster] {env_line()}")
    log(f"[cluster] sizes: {dataclasses.asdict(sizes)}")
    started = time.perf_counter()
    out: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    fail: dict[str, Any] | None = None
    with (
        tempfile.TemporaryDirectory(prefix="svbench-cluster-") as tmp,
        redis_server(Path(tmp)) as redis_url,
    ):
        if not args.skip_throughput:
            rows = anyio.run(throughput, redis_url, sizes, args.timeout, backend="asyncio")
            ratios = ratio_rows(rows)
            out += rows + ratios
        if not args.skip_failover:
            with postgres_database("failover") as dsn:
                fail = anyio.run(
                    failover,
                    dsn,
                    redis_url,
                    sizes,
                    args.lease_ttl,
                    args.word_delay,
                    backend="asyncio",
                )
            out.append(fail)
    for row in out:
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            for row in out:
                fh.write(json.dumps(row) + "\n")
    print()
    print(
        f"sessionvisor cluster benchmark, {env_line()}, total {time.perf_counter() - started:.0f} s"
    )
    if rows:
        print()
        print(
            f"Throughput: {sizes.nodes} nodes in one process against one local supervisor, "
            f"all over PostgreSQL (W2 {sizes.w2_calls} turns x {sizes.w2_reps}, median; "
            f"W3 {sizes.w3_sessions} x {sizes.w3_msgs})"
        )
        print()
        print(throughput_table(rows, ratios))
    if fail is not None:
        print()
        print(
            f"Failover: kill -9 of the node that owns a conversation during its turn, "
            f"{fail['rounds']} times, then SIGSTOP, {fail['pause']['rounds']} times; two other "
            "nodes, no new request"
        )
        print()
        print(failover_table(fail))
    bad = fail is not None and bool(
        fail["answer"]["measured"] < fail["rounds"] - fail["answered_before_kill"]
        or fail["conversations_without_exactly_one_answer"]
        or fail["pause"]["stale_writes"]
        or fail["pause"]["taken_before_lease_ended"]
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
