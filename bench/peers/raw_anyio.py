"""The raw-anyio floor: the least a keyed actor runtime on anyio can cost.

One task per key reading an unbounded memory stream, a one-shot ``anyio.Event``
per request for the reply, a restart loop that starts a fresh task (fresh
state) on the same stream when the handler raises. No persistence, no
routing, no events, no logging: what sessionvisor's memory store is compared to.

    python bench/peers/raw_anyio.py --backend trio --n1 10000 --only w1,w2

Prints one JSON object: ``{"w1": {"us_per_start", "bytes_per_actor"}, "w2":
{"us_per_call"}, "w3": {"msgs_per_s"}, "w4": {"median_us"}}`` (the keys the
comparison in ``bench/peers.py`` reads).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from typing import Any

import anyio
from anyio import WouldBlock


class Boom(Exception):
    """Raised by the handler on request: the actor dies and is restarted."""


class Reply:
    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    async def get(self) -> Any:
        if not self.event.is_set():
            await self.event.wait()
        if self.error is not None:
            raise self.error
        return self.value


class Runtime:
    """key -> mailbox; each key's task handles its messages in order."""

    def __init__(self, tg: Any) -> None:
        self.tg = tg
        self.boxes: dict[str, Any] = {}
        self.restarts = 0

    def ask(self, key: str, msg: tuple[Any, ...]) -> Reply:
        box = self.boxes.get(key)
        if box is None:  # lookup and insert without an await in between: single-flight
            tx, rx = anyio.create_memory_object_stream[Any](math.inf)
            box = self.boxes[key] = tx
            self.tg.start_soon(self.actor, rx)
        reply = Reply()
        box.send_nowait((msg, reply))
        return reply

    async def actor(self, rx: Any) -> None:
        while True:
            state: list[Any] = []  # fresh state on every (re)start
            try:
                while True:
                    try:
                        msg, reply = rx.receive_nowait()
                    except WouldBlock:
                        msg, reply = await rx.receive()
                    try:
                        reply.value = handle(state, msg)
                    except Boom as exc:
                        reply.error = exc
                        raise
                    finally:
                        reply.event.set()
            except Boom:
                self.restarts += 1


def handle(state: list[Any], msg: tuple[Any, ...]) -> Any:
    if msg[0] == "append":
        state.append(msg[1])
        return len(state)
    if msg[0] == "items":
        return list(state)
    if msg[0] == "boom":
        raise Boom
    return len(state)


def rss() -> int:
    gc.collect()
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def w1(rt: Runtime, n: int) -> dict[str, Any]:
    before = rss()
    t0 = time.perf_counter_ns()
    for i in range(n):
        await rt.ask(f"w1-{i}", ("ping",)).get()
    t1 = time.perf_counter_ns()
    return {"n": n, "us_per_start": (t1 - t0) / n / 1e3, "bytes_per_actor": (rss() - before) / n}


async def w2(rt: Runtime, calls: int, reps: int) -> dict[str, Any]:
    per = []
    for rep in range(reps):
        await rt.ask(f"w2-{rep}", ("ping",)).get()
        t0 = time.perf_counter_ns()
        for i in range(calls):
            await rt.ask(f"w2-{rep}", ("append", i)).get()
        per.append((time.perf_counter_ns() - t0) / calls / 1e3)
    return {"calls": calls, "reps_us_per_call": per, "us_per_call": statistics.median(per)}


async def w3(rt: Runtime, actors: int, msgs: int) -> dict[str, Any]:
    keys = [f"w3-{a}" for a in range(actors)]
    for key in keys:
        await rt.ask(key, ("ping",)).get()
    t0 = time.perf_counter_ns()
    replies = [(i, rt.ask(key, ("append", i))) for i in range(msgs) for key in keys]
    wrong = sum([await r.get() != i + 1 for i, r in replies])
    seconds = (time.perf_counter_ns() - t0) / 1e9
    for key in keys:
        wrong += await rt.ask(key, ("items",)).get() != list(range(msgs))
    return {"msgs_per_s": actors * msgs / seconds, "order_violations": wrong}


async def w4(rt: Runtime, crashes: int) -> dict[str, Any]:
    times = []
    for c in range(crashes):
        await rt.ask("w4", ("append", c)).get()
        t0 = time.perf_counter_ns()
        try:
            await rt.ask("w4", ("boom",)).get()
        except Boom:
            pass
        assert await rt.ask("w4", ("ping",)).get() == 0  # the restarted actor's fresh state
        times.append(time.perf_counter_ns() - t0)
    return {"crashes": crashes, "median_us": statistics.median(times) / 1e3}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    only = set(args.only.split(","))
    out: dict[str, Any] = {"peer": "raw_anyio", "backend": args.backend}
    for name, run in (
        ("w1", lambda rt: w1(rt, args.n1)),
        ("w2", lambda rt: w2(rt, args.w2_calls, args.w2_reps)),
        ("w3", lambda rt: w3(rt, args.w3_actors, args.w3_msgs)),
        ("w4", lambda rt: w4(rt, args.w4_crashes)),
    ):
        if name in only:
            async with anyio.create_task_group() as tg:
                out[name] = await run(Runtime(tg))
                tg.cancel_scope.cancel()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    ap.add_argument("--n1", type=int, default=10_000)
    ap.add_argument("--w2-calls", type=int, default=100_000)
    ap.add_argument("--w2-reps", type=int, default=3)
    ap.add_argument("--w3-actors", type=int, default=1_000)
    ap.add_argument("--w3-msgs", type=int, default=100)
    ap.add_argument("--w4-crashes", type=int, default=1_000)
    ap.add_argument("--only", default="w1,w2,w3,w4")
    args = ap.parse_args()
    print(json.dumps(anyio.run(main_async, args, backend=args.backend)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
