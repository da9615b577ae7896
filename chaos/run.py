"""Run the chaos checker: ``python -m chaos.run --seed 7 --minutes 2 --store sqlite``.

Starts real server processes (``python -m sessionvisor demo``) on a fresh
store, runs the seeded client against them while the seeded nemesis kills and
restarts them, stops the faults, lets every conversation settle, and checks
the history (see :mod:`chaos.check`). The seed is printed first; the full
history is saved as JSON lines in the run's directory (``--out``); on a
violation the seed and the relevant part of the history are printed and the
exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

from .check import check, format_violation
from .model import Client, ClientConfig, History
from .nemesis import CLUSTER_FAULTS, FAULTS, RELAY_FAULTS, Nemesis
from .procs import Node, Postgres, Redis, snapshot
from .relay import Relay

__all__ = ["main", "run_one"]

ALL_FAULTS = {**FAULTS, **CLUSTER_FAULTS, **RELAY_FAULTS}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=None, help="client time per store")
    length.add_argument("--ops", type=int, default=None, help="client operations per store")
    p.add_argument(
        "--store",
        choices=["sqlite", "postgres", "both"],
        default="both",
        help="both: SQLite, then PostgreSQL (default)",
    )
    p.add_argument("--mode", choices=["single", "cluster"], default="single")
    p.add_argument("--nodes", type=int, default=3, help="cluster mode: how many nodes")
    p.add_argument("--conversations", type=int, default=5)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--word-delay", type=float, default=0.03, help="the demo agent's")
    p.add_argument("--inactivity-timeout", type=float, default=3.0, help="the servers'")
    p.add_argument("--lease-ttl", type=float, default=3.0, help="cluster mode: the nodes'")
    p.add_argument(
        "--quiesce",
        type=float,
        default=None,
        help="seconds the system gets to settle by itself once the faults stop "
        "(default: 20 in single mode, the lease TTL + 5 in a cluster)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=60.0,
        help="then seconds to settle while the client answers what is pending",
    )
    p.add_argument(
        "--faults",
        default=",".join(ALL_FAULTS),
        help=f"comma-separated subset of {', '.join(ALL_FAULTS)} "
        "(redis: cluster mode only; pg-blackhole, pg-reset: cluster mode on PostgreSQL)",
    )
    p.add_argument(
        "--interval",
        type=float,
        nargs=2,
        default=(1.0, 6.0),
        metavar=("MIN", "MAX"),
        help="seconds between faults",
    )
    p.add_argument("--no-faults", action="store_true", help="the client only (a control run)")
    p.add_argument(
        "--snapshot",
        metavar="REV",
        default=None,
        help="run the servers from `git archive REV src` (e.g. HEAD) instead of the installed "
        "package, so edits to the working tree during the run do not reach restarted nodes",
    )
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "sessionvisor-chaos")
    return p


async def run_one(args: argparse.Namespace, seed: int, store_kind: str) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = args.out / f"{args.mode}-{store_kind}-seed{seed}-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    history = History(workdir / "history.jsonl")
    postgres: Postgres | None = None
    redis: Redis | None = None
    if store_kind == "postgres":
        postgres = Postgres(f"chaos_{seed}_{stamp.replace('-', '_')}")
        await asyncio.to_thread(postgres.create)
        store = postgres.url
    else:
        store = f"sqlite:///{workdir / 'chaos.db'}"
    if args.mode == "cluster":
        redis = Redis(workdir)
        await asyncio.to_thread(redis.start)
    src: Path | None = None
    commit = None
    if args.snapshot:
        src, commit = await asyncio.to_thread(snapshot, args.snapshot, workdir / "snapshot")
    count = args.nodes if args.mode == "cluster" else 1
    relays: list[Relay | None] = [None] * count
    stores = [store] * count
    if redis is not None and postgres is not None:  # each node through a relay of its own
        for k in range(count):
            relays[k], stores[k] = postgres.relay()
    nodes = [
        Node(
            f"n{k}",
            stores[k],
            workdir,
            word_delay=args.word_delay,
            inactivity_timeout=args.inactivity_timeout,
            cluster=redis.url if redis else None,
            lease_ttl=args.lease_ttl,
            src=src,
            relay=relays[k],
        )
        for k in range(count)
    ]
    code = f"commit {commit}" if commit else "the installed package"
    print(f"run {workdir} (store {store}, {count} node(s), {code})", flush=True)
    started = time.monotonic()
    client = Client(
        history,
        {n.name: n.url for n in nodes},
        seed,
        ClientConfig(conversations=args.conversations, workers=args.workers),
    )
    offered = dict(FAULTS)
    if redis is not None:
        offered |= CLUSTER_FAULTS
    if any(relays):
        offered |= RELAY_FAULTS
    faults = {f: w for f, w in offered.items() if f in args.faults.split(",")}
    nemesis = Nemesis(
        history,
        nodes,
        seed,
        interval=tuple(args.interval),
        faults=faults,
        redis=redis,
        lease_ttl=args.lease_ttl,
    )
    quiesce = args.quiesce
    if quiesce is None:
        quiesce = args.lease_ttl + 5.0 if args.mode == "cluster" else 20.0
    try:
        for node in nodes:
            await asyncio.to_thread(node.start)
        for node in nodes:
            if not await asyncio.to_thread(node.wait_ready, 60.0):
                print(f"node {node.name} did not start; see {workdir}", file=sys.stderr)
                return 2
        history.record(
            process="nemesis",
            type="info",
            f="begin",
            value={
                "seed": seed,
                "store": store_kind,
                "mode": args.mode,
                "commit": commit,
                "faults": sorted(faults) if not args.no_faults else [],
                "lease_ttl": args.lease_ttl,
                "quiesce": quiesce,
                "wall": time.time(),
                "argv": sys.argv[1:],
            },
        )
        stop = asyncio.Event()
        faulting = None if args.no_faults else asyncio.create_task(nemesis.run(stop))
        seconds = None if args.ops is not None else 60.0 * (args.minutes or 1.0)
        await client.run(seconds=seconds, max_ops=args.ops)
        stop.set()
        if faulting is not None:
            await faulting
        await nemesis.check_alive()
        history.record(process="nemesis", type="info", f="faults-stopped", value={})
        print(f"client done after {time.monotonic() - started:.0f}s; settling", flush=True)
        await client.quiesce(quiesce)
        await client.settle(args.settle)
        await nemesis.check_alive()
    finally:
        await client.aclose()
        for node in nodes:
            await asyncio.to_thread(node.terminate)
        for relay in relays:
            if relay is not None:
                relay.close()
        if redis is not None:
            await asyncio.to_thread(redis.stop)
        if postgres is not None:
            await asyncio.to_thread(postgres.drop)
        history.close()
    violations, stats = check(history.events)
    stats.update(
        seed=seed,
        store=store_kind,
        mode=args.mode,
        seconds=round(time.monotonic() - started, 1),
        starts={n.name: n.starts for n in nodes},
    )
    (workdir / "summary.json").write_text(
        json.dumps(
            {"stats": stats, "violations": [v.__dict__ for v in violations]}, indent=1, default=str
        )
    )
    print(json.dumps(stats), flush=True)
    for violation in violations:
        print(format_violation(history.events, violation), flush=True)
    if violations:
        again = reproduce(getattr(args, "argv", []), seed, store_kind, commit)
        print(f"reproduce: {again}", flush=True)
    verdict = f"{len(violations)} violation(s)" if violations else "no violations"
    print(
        f"seed {seed} {args.mode}/{store_kind}: {verdict}; history {workdir}/history.jsonl",
        flush=True,
    )
    return 1 if violations else 0


def reproduce(argv: list[str], seed: int, store: str, commit: str | None) -> str:
    """The command that replays a run: its arguments, with the seed, the store and the commit."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.split("=", 1)[0] in ("--seed", "--store", "--snapshot", "--out"):
            skip = "=" not in arg
            continue
        kept.append(arg)
    command = ["python", "-m", "chaos.run", "--seed", str(seed), "--store", store, *kept]
    if commit:
        command += ["--snapshot", commit]
    return shlex.join(command)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    print(f"seed {seed}", flush=True)
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    status = 0
    for store in stores:
        status = max(status, asyncio.run(run_one(args, seed, store)))
    print(f"seed {seed}: {'FAILED' if status else 'passed'}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
