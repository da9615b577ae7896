"""W10: durable timers. What a stored timer costs, and how late timers fire under load.

Part 1, scheduling (MemoryStore, in this process): T timers across C stored
conversations through ``SessionSupervisor.schedule`` (none due during the run):
microseconds per ``schedule`` and the memory the store holds per timer
(tracemalloc, before and after).

Part 2, firing (SQLiteStore with ``synchronous=NORMAL``, and PostgreSQL when
``--pg`` gives a DSN): K live conversations, then R timers due per second for S
seconds (spread evenly inside each second) on an agent whose ``on_timer`` records
how late it ran (wall clock at the hook minus the due time). Figures: lateness
p50/p99/max, timers fired, and process CPU per fired timer next to the CPU per
plain turn (W2-style: one message answered) measured on the same conversations
in the same run.

    python bench/timers.py                          # T=100,000 C=10,000; R=1000 S=30 on SQLite
    python bench/timers.py --pg postgresql://127.0.0.1:5432/test
    python bench/timers.py --quick                  # a few seconds: for the smoke test

One JSON object per part and store is printed (``--out`` appends them to a file).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sessionvisor import Done, MemoryStore, SessionSupervisor, SingleRouter, SQLiteStore, Turn
from sessionvisor.state import State, StoredConversation, dump_state


class Agent:
    def __init__(self) -> None:
        self.late: list[float] = []
        self.turns = 0

    async def run(self, turn: Turn) -> Done:
        self.turns += 1
        return Done(turn.state, reply="ok")

    async def on_timer(self, turn: Turn, payload: Any) -> Done:
        due = datetime.fromisoformat(payload["due"])
        self.late.append((datetime.now(UTC) - due).total_seconds())
        return Done(turn.state, reply="timer")


def _supervisor(store: Any, agent: Agent) -> SessionSupervisor:
    opts = {"inactivity_timeout": 3600.0, "max_queued": 10_000}
    return SessionSupervisor(SingleRouter(lambda a, c: agent), store=store, supervisor_opts=opts)


async def _seed(store: Any, cids: list[str]) -> None:
    empty = dump_state(State())
    for cid in cids:
        record = StoredConversation(state=dict(empty))
        await store.save(cid, record, expected_version=None, lifecycle="completion")


async def part_schedule(timers: int, conversations: int) -> dict[str, Any]:
    store = MemoryStore()
    cids = [f"w10-{i}" for i in range(conversations)]
    await _seed(store, cids)
    agent = Agent()
    async with _supervisor(store, agent) as sup:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        began = time.perf_counter()
        for i in range(timers):
            await sup.schedule(cids[i % conversations], {"n": i}, delay=3600 + i % 1000)
        seconds = time.perf_counter() - began
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    return {
        "part": "schedule",
        "store": "memory",
        "timers": timers,
        "conversations": conversations,
        "us_per_schedule": round(seconds / timers * 1e6, 1),
        "bytes_per_timer": round((after - before) / timers),
    }


async def part_fire(kind: str, store: Any, rate: int, seconds: int, live: int) -> dict[str, Any]:
    agent = Agent()
    cids = [f"w10f-{uuid.uuid4().hex[:8]}-{i}" for i in range(live)]
    async with store, _supervisor(store, agent) as sup:
        # W2-style baseline: one message answered per conversation (they stay live).
        cpu0, wall0 = time.process_time(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for cid in cids:
                tg.start_soon(sup.send, cid, "hi")
        while agent.turns < live:
            await anyio.sleep(0.01)
        turn_cpu = (time.process_time() - cpu0) / live
        turn_wall = time.perf_counter() - wall0
        # R timers due per second for S seconds, from 3 s from now.
        start = time.time() + 3.0 + rate * seconds * 0.0005  # lead time to schedule them
        total = rate * seconds
        pending = iter(range(total))

        async def scheduler() -> None:
            for i in pending:
                due = datetime.fromtimestamp(start + i / rate, UTC)
                await sup.schedule(cids[i % live], {"due": due.isoformat()}, at=due)

        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(32):
                tg.start_soon(scheduler)
        schedule_us = (time.perf_counter() - began) / total * 1e6
        started_late = time.time() > start  # some were due before all were scheduled
        await anyio.sleep(max(0.0, start - time.time()))
        cpu1 = time.process_time()
        deadline = time.time() + seconds + 30
        while len(agent.late) < total and time.time() < deadline:
            await anyio.sleep(0.05)
        fire_cpu = (time.process_time() - cpu1) / max(1, len(agent.late))
    late = sorted(agent.late)
    return {
        "part": "fire",
        "store": kind,
        "rate_per_s": rate,
        "seconds": seconds,
        "conversations": live,
        "scheduled": total,
        "fired": len(late),
        "us_per_schedule": round(schedule_us, 1),
        "lateness_p50_ms": round(statistics.median(late) * 1000, 1) if late else None,
        "lateness_p99_ms": round(late[int(len(late) * 0.99) - 1] * 1000, 1) if late else None,
        "lateness_max_ms": round(late[-1] * 1000, 1) if late else None,
        "cpu_ms_per_fired_timer": round(fire_cpu * 1000, 3),
        "cpu_ms_per_plain_turn": round(turn_cpu * 1000, 3),
        "plain_turns_wall_s": round(turn_wall, 2),
        "scheduling_overran_lead": started_late,
    }


def _emit(row: dict[str, Any], out: str | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


async def main(args: argparse.Namespace) -> None:
    _emit(await part_schedule(args.timers, args.conversations), args.out)
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SQLiteStore(Path(tmp) / "w10.db", synchronous="NORMAL")
        _emit(await part_fire("sqlite", sqlite, args.rate, args.seconds, args.live), args.out)
    if args.pg:
        from sessionvisor.state.postgres import PostgresStore

        table = f"w10_{uuid.uuid4().hex[:8]}"
        pg = PostgresStore(args.pg, table=table)
        try:
            _emit(await part_fire("postgres", pg, args.rate, args.seconds, args.live), args.out)
        finally:
            from psycopg import connect

            with connect(args.pg, autocommit=True) as conn:
                for suffix in ("", "_messages", "_quarantine", "_qmessages", "_timers"):
                    conn.execute(f"DROP TABLE IF EXISTS {table}{suffix}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=100_000)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--live", type=int, default=1000)
    parser.add_argument("--pg", default=None, help="a PostgreSQL DSN: also run part 2 there")
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--out", default=None)
    ns = parser.parse_args()
    if ns.quick:
        ns.timers, ns.conversations, ns.rate, ns.seconds, ns.live = 2000, 200, 100, 2, 50
    anyio.run(main, ns)
