"""Run the raw-anyio peer and sessionvisor side by side, with the same sizes, and print ratios.

The peer is ``peer_raw_anyio.py`` from ``../shared/bench/peers/`` (the floor: a
task and a memory stream per key; see its README). For each backend the peer
runs first in its own process, then sessionvisor's workloads (one process each,
memory store then SQLite), so every ratio is taken within minutes on the same
machine. Ratios are ours / peer; a time wants a ratio <= 1, a rate >= 1.

    .venv/bin/python bench/peers.py                       # defaults, asyncio
    .venv/bin/python bench/peers.py --backend both --out bench/results/peers.jsonl
    .venv/bin/python bench/peers.py --quick --peers-dir /path/to/shared/bench/peers
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from _harness import (
    STORES,
    add_size_flags,
    env_line,
    log,
    results_table,
    run_peer_raw_anyio,
    sizes_from_args,
)
from run import backends_of, parse_list, run_matrix

DEFAULT_PEERS_DIR = Path(__file__).resolve().parents[2] / "shared" / "bench" / "peers"

# (row label, peer figure path, our workload, our figure path, "time"|"rate"|"bytes")
ROWS: list[tuple[str, tuple[str, ...] | None, str, tuple[str, ...], str]] = [
    ("W1 µs per cold start", ("w1", "us_per_start"), "W1", ("us_per_start",), "time"),
    ("W1 bytes per idle session", ("w1", "bytes_per_actor"), "W1", ("bytes_per_session",), "bytes"),
    (
        "W1 bytes per parked session",
        ("w1", "bytes_per_actor"),
        "W1",
        ("bytes_per_session_parked",),
        "bytes",
    ),
    ("W2 µs per round trip (history ≤ 8)", ("w2", "us_per_call"), "W2", ("us_per_call",), "time"),
    (
        "W2 µs per round trip (history grows)",
        ("w2", "us_per_call"),
        "W2",
        ("growing", "us_per_call"),
        "time",
    ),
    ("W3 messages/s", ("w3", "msgs_per_s"), "W3", ("msgs_per_s",), "rate"),
    ("W4 µs crash → next reply (median)", ("w4", "median_us"), "W4", ("median_us",), "time"),
    ("W5 events/s delivered", None, "W5", ("events_per_s",), "rate"),
    ("W5 others' rate with a stalled subscriber", None, "W5", ("stalled_ratio",), "ratio"),
    ("W6 ms to first event (wake, 1,000 msgs)", None, "W6", ("ms_first_event",), "time"),
]


def dig(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def target(label: str, store: str, backend: str, ours: Any, ratio: Any, n1: int) -> tuple[str, Any]:
    """The target of issue 6 for this row, and whether it is met (None: no target)."""
    if ours is None:
        return "", None
    w = label.split()[0]
    if backend == "trio":
        if ratio is None:
            if label.startswith("W5 others"):
                return "≥ 0.90", ours >= 0.9
            return "", None
        if "rate" in label or "messages/s" in label:
            return "≥ 1x peer", ratio >= 1.0
        return "≤ 1x peer", ratio <= 1.0
    if label.startswith("W1 µs"):
        return "≤ 40 µs", ours <= 40
    if label.startswith("W1 bytes"):
        note = "" if n1 >= 100_000 else f" (N={n1:,})"
        return "≤ 2,000 B" + note, ours <= 2000
    if w == "W2":
        limit = 1.5 if store == "memory" else 3.0
        return f"≤ {limit}x peer", None if ratio is None else ratio <= limit
    if w == "W3":
        return "≥ 1x peer", None if ratio is None else ratio >= 1.0
    if w == "W4":
        return "≤ 2x peer", None if ratio is None else ratio <= 2.0
    if label.startswith("W5 others"):
        return "≥ 0.90", ours >= 0.9
    if w == "W6":
        return "≤ 20 ms", ours <= 20
    return "", None


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) < 10:
        return f"{x:,.2f}"
    return f"{x:,.{digits}f}"


def comparisons(
    peer: dict, ours: list[dict], backend: str, stores: list[str], n1: int
) -> list[dict]:
    by = {(r["workload"], r["store"]): r for r in ours if r.get("backend") == backend}
    rows = []
    for label, ppath, workload, opath, _kind in ROWS:
        peer_value = dig(peer, ppath) if ppath and "error" not in peer else None
        for store in stores:
            result = by.get((workload, store), {})
            value = dig(result, opath)
            ratio = value / peer_value if value is not None and peer_value else None
            goal, met = target(label, store, backend, value, ratio, n1)
            rows.append(
                {
                    "compare": label,
                    "backend": backend,
                    "store": store,
                    "ours": value,
                    "peer_raw_anyio": peer_value,
                    "ours_over_peer": ratio,
                    "target": goal,
                    "met": met,
                }
            )
    return rows


def comparison_table(rows: list[dict], stores: list[str]) -> str:
    head = "| figure | raw anyio | " + " | ".join(
        f"ours, {s} | ratio | target | met" for s in stores
    )
    lines = [head + " |", "|---|---:|" + "---:|---:|---|---|" * len(stores)]
    labels = list(dict.fromkeys(r["compare"] for r in rows))
    for label in labels:
        cells = [label]
        group = [r for r in rows if r["compare"] == label]
        cells.append(fmt(group[0]["peer_raw_anyio"]))
        for store in stores:
            r = next((g for g in group if g["store"] == store), None)
            if r is None:
                cells += ["", "", "", ""]
                continue
            ratio = r["ours_over_peer"]
            cells += [
                fmt(r["ours"]),
                "" if ratio is None else f"{ratio:,.2f}x",
                r["target"],
                "" if r["met"] is None else fmt(r["met"]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replay(path: Path, stores: list[str]) -> int:
    """Rebuild the tables from the JSON lines of an earlier run."""
    lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    peers = {r["backend"]: r for r in lines if r.get("system") == "peer_raw_anyio"}
    ours = [r for r in lines if "workload" in r]
    sizes = next((r.get("sizes") for r in ours if r.get("sizes")), None)
    n1 = next((r["n"] for r in ours if r["workload"] == "W1" and "n" in r), 0)
    env = next((r.get("versions") for r in ours if r.get("versions")), {})
    print(f"run saved in {path}; versions: {json.dumps(env)}")
    if sizes:
        print(f"sizes: {json.dumps(sizes)}")
    for backend in dict.fromkeys(r["backend"] for r in ours):
        peer = peers.get(backend, {"error": "no peer figures in the file"})
        rows = comparisons(peer, ours, backend, stores, n1)
        print(f"\n### {backend} backend\n")
        print(comparison_table(rows, stores))
    print()
    print(results_table(ours))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    ap.add_argument("--backend", choices=["asyncio", "trio", "both"], default="asyncio")
    ap.add_argument("--stores", default=",".join(STORES), help="memory,sqlite (default: both)")
    ap.add_argument(
        "--peers-dir",
        type=Path,
        default=DEFAULT_PEERS_DIR,
        help=f"where peer_raw_anyio.py lives (default {DEFAULT_PEERS_DIR})",
    )
    ap.add_argument("--out", default=None, help="also append every JSON line to this file")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per process")
    ap.add_argument(
        "--from",
        dest="from_file",
        type=Path,
        default=None,
        help="print the tables of a run saved with --out, without running anything",
    )
    add_size_flags(ap)
    args = ap.parse_args()
    sizes = sizes_from_args(args)
    stores = parse_list(args.stores, STORES, "store")
    if args.from_file:
        return replay(args.from_file, stores)
    timeout = args.timeout or (180.0 if args.quick else 1800.0)
    peer_script = args.peers_dir / "peer_raw_anyio.py"
    have_peer = peer_script.is_file() and (args.peers_dir / "common.py").is_file()
    if not have_peer:
        log(
            f"[peers] no raw-anyio peer at {args.peers_dir} (peer_raw_anyio.py and common.py "
            "are needed); running sessionvisor alone, without ratios. Point --peers-dir at "
            "a checkout of shared/bench/peers to compare."
        )
    log(f"[peers] {env_line()}")
    log(f"[peers] sizes: {dataclasses.asdict(sizes)}")

    def emit(obj: dict) -> None:
        line = json.dumps(obj)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(line + "\n")

    t0 = time.perf_counter()
    tables = []
    all_ours: list[dict] = []
    for backend in backends_of(args.backend):
        peer: dict = {"error": "peer not run"}
        if have_peer:
            log(f"[peers] raw anyio peer, {backend} ...")
            peer = run_peer_raw_anyio(args.peers_dir, backend, sizes, timeout=timeout)
            emit({"system": "peer_raw_anyio", "backend": backend, **peer})
        ours = run_matrix(
            ["W1", "W2", "W3", "W4", "W5", "W6"],
            stores,
            [backend],
            sizes,
            timeout=timeout,
            out=args.out,
        )
        all_ours += ours
        rows = comparisons(peer, ours, backend, stores, sizes.n1)
        for row in rows:
            emit(row)
        title = f"### {backend} backend"
        if "error" in peer:
            title += f" (no peer figures: {peer['error']})"
        tables.append(title + "\n\n" + comparison_table(rows, stores))
    print()
    print(f"sessionvisor vs raw anyio, {env_line()}, total {time.perf_counter() - t0:.0f} s")
    print(f"sizes: {json.dumps(dataclasses.asdict(sizes))}")
    print()
    print("\n\n".join(tables))
    print()
    print(results_table(all_ours))
    return 1 if any("error" in r for r in all_ours) else 0


if __name__ == "__main__":
    sys.exit(main())
