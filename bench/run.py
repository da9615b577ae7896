"""Run the benchmark workloads W1-W6 against sessionvisor (see ``docs/performance.md``).

Each workload runs in a fresh interpreter (so W1's RSS figure starts clean), first
with the memory store, then with SQLite (a file in a temporary directory; the
runtime persists at turn start and completion, as in a deployment). Prints one
JSON object per workload and store, then a table.

    .venv/bin/python bench/run.py                 # defaults: a few minutes on 2 cores
    .venv/bin/python bench/run.py --quick         # under a minute
    .venv/bin/python bench/run.py --backend both --only W1,W2 --n1 100000 --out r.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from _harness import (
    ALL_STORES,
    STORES,
    WORKLOADS,
    Sizes,
    add_size_flags,
    env_line,
    log,
    results_table,
    sizes_from_args,
    spawn_workload,
    worker,
)


def parse_list(text: str, valid: tuple[str, ...], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    normalized = []
    for item in items:
        match = [v for v in valid if v.lower() == item.lower()]
        if not match:
            raise SystemExit(f"unknown {what} {item!r}; expected some of {', '.join(valid)}")
        normalized.append(match[0])
    return normalized


def backends_of(choice: str) -> list[str]:
    return ["asyncio", "trio"] if choice == "both" else [choice]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: the whole run < 60 s")
    ap.add_argument("--backend", choices=["asyncio", "trio", "both"], default="asyncio")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="e.g. W1,W2 (default: all)")
    ap.add_argument(
        "--stores", default=",".join(STORES), help="memory,sqlite,postgres (default: memory,sqlite)"
    )
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    ap.add_argument(
        "--timeout", type=float, default=None, help="seconds per workload (default 1800; quick 120)"
    )
    add_size_flags(ap)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sizes-json", default=None, help=argparse.SUPPRESS)
    return ap


def run_matrix(
    workloads: list[str],
    stores: list[str],
    backends: list[str],
    sizes: Sizes,
    *,
    timeout: float,
    out: str | None = None,
    echo: bool = True,
) -> list[dict]:
    """Run every workload x store x backend, each in its own process; print JSON lines."""
    results = []
    for backend in backends:
        for store in stores:
            for workload in workloads:
                log(f"[bench] {workload} {store} {backend} ...")
                t0 = time.perf_counter()
                result = spawn_workload(workload, store, backend, sizes, timeout=timeout)
                took = time.perf_counter() - t0
                log(f"[bench] {workload} {store} {backend} done in {took:.1f} s")
                results.append(result)
                line = json.dumps(result)
                if echo:
                    print(line, flush=True)
                if out:
                    with open(out, "a") as fh:
                        fh.write(line + "\n")
    return results


def main() -> int:
    args = build_parser().parse_args()
    if args.worker:
        sizes = Sizes(**json.loads(args.sizes_json)) if args.sizes_json else sizes_from_args(args)
        result = worker(args.worker, args.stores, args.backend, sizes)
        print(json.dumps(result), flush=True)
        return 0
    sizes = sizes_from_args(args)
    workloads = parse_list(args.only, WORKLOADS, "workload")
    stores = parse_list(args.stores, ALL_STORES, "store")
    timeout = args.timeout or (120.0 if args.quick else 1800.0)
    log(f"[bench] {env_line()}")
    log(f"[bench] sizes: {dataclasses.asdict(sizes)}")
    t0 = time.perf_counter()
    results = run_matrix(
        workloads, stores, backends_of(args.backend), sizes, timeout=timeout, out=args.out
    )
    print()
    print(f"sessionvisor benchmarks, {env_line()}, total {time.perf_counter() - t0:.0f} s")
    print()
    print(results_table(results))
    failed = [r for r in results if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
