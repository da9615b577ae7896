"""W9: durable steps (``turn.step``) against one fsync'd commit and against W3.

Two figures per store (SQLite, and PostgreSQL with ``--stores sqlite,postgres``):

(a) **µs per step.** One conversation runs turns of ten trivial steps (an async
    function that returns its argument, so the figure is the journal's cost, not
    a worker thread's). The agent times its ten steps, divided by ten; the figures
    are the median over the first 5 turns (the conversation's audit trail of ended
    turns' steps is still short) and over the turns from the 30th on (the trail is
    full: 200-250 steps, part of every save). Idempotent steps (one save each) and
    non-idempotent steps (two saves: intent and result) are measured apart.
    Two baselines are taken in the same process, on the same disk or server:
    one plain commit of one ~150-byte row (sqlite3 in WAL mode with
    ``synchronous=FULL``, or psycopg INSERT + COMMIT), and one
    ``SQLiteStore.save``/``PostgresStore.save`` of a small conversation.

(b) **steps/s with many conversations.** C conversations (default 1,000) each
    run T turns (default 2) of ten steps, one after the other, all conversations
    at once. This is set beside W3's messages/s (``bench/run.py``'s W3: 1,000
    sessions x 20 messages), which runs in a fresh process of the same run.

Each store's W9 runs in a fresh interpreter; it prints one JSON object per
store and workload, then a table.

    .venv/bin/python bench/steps.py                              # SQLite: about a minute
    .venv/bin/python bench/steps.py --stores sqlite,postgres     # and PostgreSQL
    .venv/bin/python bench/steps.py --quick                      # small sizes: seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from _harness import (
    BENCH_DIR,
    REPO_DIR,
    Client,
    Sizes,
    env_line,
    log,
    postgres_database,
    spawn_worker,
    versions,
)
from disk import BODY, sqlite_limits

from sessionvisor import Done, SessionSupervisor, SingleRouter, SQLiteStore
from sessionvisor.state import State, StoredConversation, dump_state

STORES = ("sqlite", "postgres")
#: (a) reports the median of the first SHORT_TRAIL turns (an audit trail of fewer than
#: 50 steps) and of the turns from FULL_TRAIL on (a full trail of 200-250 steps).
SHORT_TRAIL = 5
FULL_TRAIL = 30


@dataclasses.dataclass
class W9Sizes:
    turns: int = 200  # (a): turns of the one conversation, per kind of step
    steps: int = 10  # steps per turn, in (a) and (b)
    conversations: int = 1_000  # (b)
    turns_each: int = 2  # (b): turns per conversation
    commits: int = 300  # the baselines: commits / saves timed
    w3_sessions: int = 1_000  # W3 beside (b)
    w3_msgs: int = 20

    @classmethod
    def quick(cls) -> W9Sizes:
        return cls(
            turns=FULL_TRAIL + 5,
            conversations=50,
            turns_each=1,
            commits=30,
            w3_sessions=50,
            w3_msgs=5,
        )


# --------------------------------------------------------------------------- the agent


async def trivial(i: int) -> int:
    return i


class StepAgent:
    """Replies ``ok`` after ``steps`` trivial steps (none for a ``warm`` message);
    appends the nanoseconds its steps took to ``timings``."""

    __slots__ = ("idempotent", "steps", "timings")

    def __init__(self, steps: int, idempotent: bool, timings: list[int]) -> None:
        self.steps = steps
        self.idempotent = idempotent
        self.timings = timings

    async def run(self, turn: Any) -> Done:
        if turn.state.messages[-1].content == "warm":
            return Done(turn.state, reply="warm")
        idempotent = self.idempotent
        t0 = time.perf_counter_ns()
        for i in range(self.steps):
            await turn.step(f"s{i}", trivial, i, idempotent=idempotent)
        self.timings.append(time.perf_counter_ns() - t0)
        return Done(turn.state, reply="ok")


def _router(sizes: W9Sizes, timings: list[int]) -> SingleRouter:
    def create_agent(agent_id: str, config: Any) -> StepAgent:
        idempotent = config["conversation_id"].startswith("idem")
        return StepAgent(sizes.steps, idempotent, timings)

    return SingleRouter(create_agent)


# --------------------------------------------------------------------------- baselines


def _postgres_commit(dsn: str, commits: int) -> float:
    """Median µs of one psycopg INSERT + COMMIT of one row (the server's own fsync)."""
    import psycopg

    times = []
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE w9_commit (k TEXT, n INTEGER, body TEXT, PRIMARY KEY (k, n))")
        conn.commit()
        for i in range(commits):
            t0 = time.perf_counter_ns()
            conn.execute("INSERT INTO w9_commit VALUES ('one', %s, %s)", (i, BODY))
            conn.commit()
            times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e3


async def _store_save(store: Any, commits: int) -> float:
    """Median µs of one ``store.save`` of a small conversation (a new version each)."""
    state = State()
    record = StoredConversation(state=dump_state(state))
    version = await store.save("w9-save", record, expected_version=None, lifecycle="turn_start")
    times = []
    for _ in range(commits):
        t0 = time.perf_counter_ns()
        version = await store.save(
            "w9-save", record, expected_version=version, lifecycle="completion"
        )
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e3


# --------------------------------------------------------------------------- W9


async def _one_conversation(sup: SessionSupervisor, cid: str, turns: int) -> None:
    async with AsyncExitStack() as stack:
        client = await Client(sup, cid).open(stack)
        await client.request("warm")
        for i in range(turns):
            await client.request(str(i))


async def _many(sup: SessionSupervisor, prefix: str, sizes: W9Sizes) -> float:
    """Seconds for every conversation to run its turns of steps, all at once."""
    async with AsyncExitStack() as stack:
        clients = [
            await Client(sup, f"{prefix}-{i}").open(stack) for i in range(sizes.conversations)
        ]
        for c in clients:
            await c.request("warm")

        async def converse(c: Client) -> None:
            for i in range(sizes.turns_each):
                await c.request(str(i))

        t0 = time.perf_counter_ns()
        async with anyio.create_task_group() as tg:
            for c in clients:
                tg.start_soon(converse, c)
        return (time.perf_counter_ns() - t0) / 1e9


async def _w9(store: Any, sizes: W9Sizes) -> dict[str, Any]:
    timings: list[int] = []
    opts = {"inactivity_timeout": 86_400.0}
    out: dict[str, Any] = {}
    async with store:
        out["us_per_save"] = await _store_save(store, sizes.commits)
        sup = SessionSupervisor(_router(sizes, timings), store=store, supervisor_opts=opts)
        async with sup:
            for kind in ("idem", "nonidem"):
                timings.clear()
                await _one_conversation(sup, f"{kind}-one", sizes.turns)
                per_step = [t / sizes.steps / 1e3 for t in timings]
                # The first turns, while the audit trail is short, and the turns once
                # it is full (AUDIT_KEEP records, rewritten with the head at each save).
                out[f"us_per_step_{kind}"] = statistics.median(per_step[:SHORT_TRAIL])
                out[f"us_per_step_{kind}_full_trail"] = statistics.median(
                    per_step[FULL_TRAIL:] or per_step
                )
            for kind in ("idem", "nonidem"):
                seconds = await _many(sup, f"{kind}-many", sizes)
                steps = sizes.conversations * sizes.turns_each * sizes.steps
                out[f"steps_per_s_{kind}"] = steps / seconds
                out[f"turns_per_s_{kind}"] = sizes.conversations * sizes.turns_each / seconds
    return out


async def _worker(store_kind: str, sizes: W9Sizes) -> dict[str, Any]:
    if store_kind == "postgres":
        from sessionvisor.state.postgres import PostgresStore

        async with postgres_database() as dsn:
            commit = await anyio.to_thread.run_sync(_postgres_commit, dsn, sizes.commits)
            figures = await _w9(PostgresStore(dsn), sizes)
            return {"us_per_commit": commit, **figures}
    with tempfile.TemporaryDirectory(prefix="svbench-w9-") as tmp:
        commit = sqlite_limits(tmp, commits=sizes.commits, rows=200, per=200)["us_per_commit"]
        figures = await _w9(SQLiteStore(Path(tmp) / "w9.db"), sizes)
        return {"us_per_commit": commit, **figures}


# --------------------------------------------------------------------------- the command


def _spawn(store_kind: str, sizes: W9Sizes, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH_DIR / "steps.py"), "--worker", store_kind]
    cmd += ["--sizes-json", json.dumps(dataclasses.asdict(sizes))]
    base = {"workload": "W9", "store": store_kind}
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


def _n(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def table(w9: dict[str, Any], w3: dict[str, Any]) -> str:
    store = w9["store"]
    commit, save = w9["us_per_commit"], w9["us_per_save"]
    rows = [
        f"#### {store}",
        "",
        "| figure | value | ÷ one commit | ÷ one store save |",
        "|---|---:|---:|---:|",
        f"| one plain commit, µs (median) | {_n(commit)} | 1.00x | |",
        f"| one `{'SQLiteStore' if store == 'sqlite' else 'PostgresStore'}.save`, µs (median) "
        f"| {_n(save)} | {save / commit:.2f}x | 1.00x |",
    ]
    for kind, label in (("idem", "idempotent"), ("nonidem", "non-idempotent")):
        for key, trail in (("", "short"), ("_full_trail", "full")):
            us = w9[f"us_per_step_{kind}{key}"]
            rows.append(
                f"| (a) µs per {label} step, {trail} audit trail (median) "
                f"| {_n(us)} | {us / commit:.2f}x | {us / save:.2f}x |"
            )
    rows += ["", "| figure | value | ÷ W3 messages/s |", "|---|---:|---:|"]
    w3_rate = w3.get("msgs_per_s")
    if w3_rate:
        rows.append(
            f"| W3 messages/s ({w3['sessions']:,} x {w3['msgs_per_session']}) "
            f"| {_n(w3_rate)} | 1.00x |"
        )
    for kind, label in (("idem", "idempotent"), ("nonidem", "non-idempotent")):
        rate = w9[f"steps_per_s_{kind}"]
        ratio = f"{rate / w3_rate:.2f}x" if w3_rate else "n/a"
        rows.append(
            f"| (b) {label} steps/s, {w9['conversations']:,} conversations | {_n(rate)} | {ratio} |"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (the smoke test's)")
    ap.add_argument("--stores", default="sqlite", help="sqlite,postgres (default: sqlite)")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    for f in dataclasses.fields(W9Sizes):
        ap.add_argument("--" + f.name.replace("_", "-"), type=int, default=None, dest=f.name)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sizes-json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        sizes = W9Sizes(**json.loads(args.sizes_json))
        figures = anyio.run(_worker, args.worker, sizes)
        print(json.dumps(figures), flush=True)
        return 0
    sizes = W9Sizes.quick() if args.quick else W9Sizes()
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(W9Sizes)
        if getattr(args, f.name) is not None
    }
    sizes = dataclasses.replace(sizes, **overrides)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    for s in stores:
        if s not in STORES:
            raise SystemExit(f"unknown store {s!r}; expected some of {', '.join(STORES)}")
    log(f"[w9] {env_line()}")
    log(f"[w9] sizes: {dataclasses.asdict(sizes)}")
    failed = False
    tables = []
    for store in stores:
        log(f"[w9] W9 {store} ...")
        w9 = {"workload": "W9", "store": store, **_spawn(store, sizes, args.timeout)}
        w9.update({k: v for k, v in dataclasses.asdict(sizes).items() if k != "commits"})
        w9["versions"] = versions()
        log(f"[w9] W3 {store} ...")
        w3_sizes = Sizes(w3_sessions=sizes.w3_sessions, w3_msgs=sizes.w3_msgs)
        w3 = spawn_worker("W3", store, "asyncio", w3_sizes, timeout=args.timeout)
        for result in (w9, w3):
            line = json.dumps(result)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(line + "\n")
        if "error" in w9 or "error" in w3:
            failed = True
            continue
        tables.append(table(w9, w3))
    print()
    print(f"W9 durable steps, {env_line()}")
    print()
    print("\n\n".join(tables))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
