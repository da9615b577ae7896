"""sessionvisor beside its floors, in one run: the raw-anyio peer and the disk.

For each backend: the raw-anyio floor (``bench/peers/raw_anyio.py``) runs in
its own process, then the plain-``sqlite3`` limits of this disk
(``bench/disk.py``), then sessionvisor's W1-W6 (one process each) with the
memory store, SQLite and PostgreSQL (a database the run creates on
``SVBENCH_POSTGRES_DSN``, default ``postgresql://root@127.0.0.1:5432/test``,
and drops). Every ratio is taken within minutes on the same machine: a time
wants a ratio <= 1, a rate >= 1. The targets are those of docs/performance.md.

    .venv/bin/python bench/peers.py                          # defaults, asyncio
    .venv/bin/python bench/peers.py --backend both --out bench/results/peers.jsonl
    .venv/bin/python bench/peers.py --quick --stores memory,sqlite
    .venv/bin/python bench/peers.py --from bench/results/peers.jsonl   # tables again
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _harness import (
    ALL_STORES,
    PEERS_DIR,
    REPO_DIR,
    add_size_flags,
    env_line,
    log,
    results_table,
    run_peer_raw_anyio,
    sizes_from_args,
)
from disk import sqlite_limits
from run import backends_of, parse_list, run_matrix

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
    """The target for this row against the raw-anyio floor, and whether it is met."""
    if ours is None or ratio is None:
        return "", None
    if store != "memory":
        return "", None  # the durable stores are held to the disk instead (see durability)
    if label.startswith("W1 µs"):
        return "≤ 1x peer", ratio <= 1.0
    if label.startswith("W2 µs per round trip (history ≤"):
        return "≤ 4x peer", ratio <= 4.0
    if label.startswith("W3"):
        return "≥ 0.5x peer", ratio >= 0.5
    if label.startswith("W4"):
        return "≤ 3x peer", ratio <= 3.0
    return "", None


def durability(limits: dict, ours: list[dict], backend: str) -> list[dict]:
    """The durable stores against the disk's limits and against their own first window."""
    by = {(r["workload"], r["store"]): r for r in ours if r.get("backend") == backend}
    rows: list[dict] = []

    def add(figure: str, value: Any, floor: Any, goal: str, met: Any) -> None:
        ratio = value / floor if value is not None and floor else None
        rows.append(
            {
                "durability": figure,
                "backend": backend,
                "ours": value,
                "limit": floor,
                "ratio": ratio,
                "target": goal,
                "met": None if ratio is None else met(ratio),
            }
        )

    commit, rate = limits.get("us_per_commit"), limits.get("rows_per_s")
    sqlite_w2 = dig(by.get(("W2", "sqlite"), {}), ("us_per_call",))
    add("SQLite W2 µs per turn / one fsync'd commit", sqlite_w2, commit, "≤ 2x", lambda r: r <= 2)
    sqlite_w3 = dig(by.get(("W3", "sqlite"), {}), ("msgs_per_s",))
    add(
        "SQLite W3 messages/s / rows/s in 200-row commits",
        sqlite_w3,
        rate,
        "≥ 0.25x",
        lambda r: r >= 0.25,
    )
    pg_w3 = dig(by.get(("W3", "postgres"), {}), ("msgs_per_s",))
    add(
        "Postgres W3 messages/s / 10,000",
        pg_w3,
        10_000 if pg_w3 else None,
        "≥ 1x",
        lambda r: r >= 1,
    )
    for store in ("memory", "sqlite", "postgres"):
        windows = dig(by.get(("W2", store), {}), ("growing", "windows")) or []
        if len(windows) >= 2:
            last, first = windows[-1], windows[0]
            add(
                f"{store} W2 growing: µs per turn at {last['history_at_end']:,} messages "
                f"/ at {first['history_at_end']:,}",
                last["us_per_call"],
                first["us_per_call"],
                "≤ 1.25x" if store != "memory" else "",
                (lambda r: r <= 1.25) if store != "memory" else (lambda r: None),
            )
    return rows


def durability_table(rows: list[dict]) -> str:
    lines = ["| figure | ours | limit | ratio | target | met |", "|---|---:|---:|---:|---|---|"]
    for r in rows:
        ratio = r["ratio"]
        lines.append(
            f"| {r['durability']} | {fmt(r['ours'])} | {fmt(r['limit'])} | "
            f"{'' if ratio is None else f'{ratio:,.2f}x'} | {r['target']} | "
            f"{'' if r['met'] is None else fmt(r['met'])} |"
        )
    return "\n".join(lines)


def windows_table(ours: list[dict], backend: str) -> str:
    """W2 with a growing history: µs per turn in each window, per store."""
    by = {r["store"]: r for r in ours if r.get("workload") == "W2" and r.get("backend") == backend}
    stores = [s for s in by if dig(by[s], ("growing", "windows"))]
    if not stores:
        return ""
    windows = {s: by[s]["growing"]["windows"] for s in stores}
    lines = [
        "| history at window end | " + " | ".join(f"{s} µs/turn" for s in stores) + " |",
        "|---:|" + "---:|" * len(stores),
    ]
    for i, w in enumerate(windows[stores[0]]):
        cells = [f"{w['history_at_end']:,}"]
        for s in stores:
            ws = windows[s]
            cells.append(fmt(ws[i]["us_per_call"]) if i < len(ws) else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


DURABLE = [
    ("langgraph", "sqlite"),
    ("langgraph", "postgres"),
    ("agno", "sqlite"),
    ("agno", "postgres"),
]
PEERS_VENV = REPO_DIR / ".venv-peers" / "bin" / "python"


def run_durable_peers(args: Any, timeout: float) -> list[dict]:
    """Run bench/peers/durable.py for each framework and store, in the peers' venv."""
    if not PEERS_VENV.is_file():
        log(
            "[peers] no .venv-peers: durable peers skipped (python3 -m venv .venv-peers && "
            ".venv-peers/bin/pip install -r bench/requirements-peers.txt)"
        )
        return []
    results = []
    for peer, store in DURABLE:
        log(f"[peers] {peer} with {store} ...")
        cmd = [
            str(PEERS_VENV),
            str(PEERS_DIR / "durable.py"),
            "--peer",
            peer,
            "--store",
            store,
            "--w2-flat",
            str(args.peer_w2_flat),
            "--w2-growing",
            str(args.peer_w2_growing),
            "--w3-conversations",
            str(args.peer_w3_conversations),
            "--w3-msgs",
            str(args.peer_w3_msgs),
        ]
        base = {"system": "durable_peer", "peer": peer, "store": store}
        try:
            proc = subprocess.run(
                cmd, stdout=subprocess.PIPE, text=True, timeout=timeout, cwd=REPO_DIR, check=False
            )
        except subprocess.TimeoutExpired:
            results.append({**base, "error": f"timed out after {timeout:.0f} s"})
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            results.append({**base, "error": f"exited with {proc.returncode} (see stderr)"})
            continue
        results.append({**base, **json.loads(lines[-1])})
    return results


def durable_table(peers: list[dict], ours: list[dict], backend: str) -> str:
    """sessionvisor's SQLite and Postgres rows beside the durable peers'."""
    by = {(r["workload"], r["store"]): r for r in ours if r.get("backend") == backend}
    lines = [
        "| system, store | W2 µs/turn, flat history | W2 µs/turn, growing (last window) "
        "| W3 messages/s (conversations x messages) | W6 ms reopen → reply |",
        "|---|---:|---:|---:|---:|",
    ]
    for store in ("sqlite", "postgres"):
        w2, w3, w6 = (by.get((w, store), {}) for w in ("W2", "W3", "W6"))
        if not (w2 or w3 or w6):
            continue
        windows = dig(w2, ("growing", "windows")) or [{}]
        lines.append(
            f"| sessionvisor, {store} | {fmt(w2.get('us_per_call'))} | "
            f"{fmt(windows[-1].get('us_per_call'))} ({fmt(windows[-1].get('history_at_end'))} "
            f"msgs) | {fmt(w3.get('msgs_per_s'))} ({w3.get('sessions')}x"
            f"{w3.get('msgs_per_session')}) | {fmt(w6.get('ms_reply'))} |"
        )
    for r in peers:
        if "error" in r:
            lines.append(f"| {r['peer']}, {r['store']} | {r['error']} | | | |")
            continue
        windows = dig(r, ("w2", "growing", "windows")) or [{}]
        w3 = r.get("w3", {})
        lines.append(
            f"| {r['peer']}, {r['store']} | {fmt(dig(r, ('w2', 'us_per_call')))} | "
            f"{fmt(windows[-1].get('us_per_call'))} ({fmt(windows[-1].get('history_at_end'))} "
            f"msgs) | {fmt(w3.get('msgs_per_s'))} ({w3.get('conversations')}x"
            f"{w3.get('msgs_per_conversation')}) | {fmt(dig(r, ('w6', 'ms_reply')))} |"
        )
    return "\n".join(lines)


def tables_for(
    backend: str, peer: dict, limits: dict, ours: list[dict], stores: list[str], n1: int
) -> tuple[list[dict], list[dict], str]:
    rows = comparisons(peer, ours, backend, stores, n1)
    durable = durability(limits, ours, backend)
    title = f"### {backend} backend"
    if "error" in peer:
        title += f" (no peer figures: {peer['error']})"
    limit_line = (
        f"Disk (plain sqlite3, WAL, FULL): {fmt(limits.get('us_per_commit'))} µs per fsync'd "
        f"commit; {fmt(limits.get('rows_per_s'))} rows/s in 200-row commits."
        if "us_per_commit" in limits
        else f"Disk limits not measured: {limits.get('error', 'unknown')}"
    )
    text = "\n\n".join(
        part
        for part in (
            title,
            comparison_table(rows, stores),
            "#### Durability against the disk\n\n" + limit_line,
            durability_table(durable),
            "#### W2 with a growing history, per window\n\n" + windows_table(ours, backend),
        )
        if part
    )
    return rows, durable, text


def replay(path: Path, stores: list[str]) -> int:
    """Rebuild the tables from the JSON lines of an earlier run."""
    lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    peers = {r["backend"]: r for r in lines if r.get("system") == "peer_raw_anyio"}
    limits = {r["backend"]: r for r in lines if r.get("system") == "disk"}
    ours = [r for r in lines if "workload" in r]
    sizes = next((r.get("sizes") for r in ours if r.get("sizes")), None)
    n1 = next((r["n"] for r in ours if r["workload"] == "W1" and "n" in r), 0)
    env = next((r.get("versions") for r in ours if r.get("versions")), {})
    print(f"run saved in {path}; versions: {json.dumps(env)}")
    if sizes:
        print(f"sizes: {json.dumps(sizes)}")
    durable = [r for r in lines if r.get("system") == "durable_peer"]
    for backend in dict.fromkeys(r["backend"] for r in ours):
        peer = peers.get(backend, {"error": "no peer figures in the file"})
        _, _, text = tables_for(backend, peer, limits.get(backend, {}), ours, stores, n1)
        print("\n" + text)
        if durable and backend == "asyncio":
            print("\n#### Durable peers (asyncio)\n\n" + durable_table(durable, ours, backend))
    print()
    print(results_table(ours))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument("--backend", choices=["asyncio", "trio", "both"], default="asyncio")
    ap.add_argument(
        "--stores",
        default=",".join(ALL_STORES),
        help="memory,sqlite,postgres (default: all three)",
    )
    ap.add_argument("--peers-dir", type=Path, default=PEERS_DIR, help="where raw_anyio.py lives")
    ap.add_argument("--out", default=None, help="also append every JSON line to this file")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per process")
    ap.add_argument(
        "--from",
        dest="from_file",
        type=Path,
        default=None,
        help="print the tables of a run saved with --out, without running anything",
    )
    ap.add_argument("--no-durable", action="store_true", help="leave LangGraph and Agno out")
    ap.add_argument("--peer-w2-flat", type=int, default=300, help="durable peers: W2 flat turns")
    ap.add_argument(
        "--peer-w2-growing", type=int, default=500, help="durable peers: W2 growing turns"
    )
    ap.add_argument("--peer-w3-conversations", type=int, default=200)
    ap.add_argument("--peer-w3-msgs", type=int, default=10)
    add_size_flags(ap)
    args = ap.parse_args()
    sizes = sizes_from_args(args)
    stores = parse_list(args.stores, ALL_STORES, "store")
    if args.from_file:
        return replay(args.from_file, stores)
    timeout = args.timeout or (300.0 if args.quick else 1800.0)
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
        log(f"[peers] raw anyio peer, {backend} ...")
        peer = run_peer_raw_anyio(args.peers_dir, backend, sizes, timeout=timeout)
        emit({"system": "peer_raw_anyio", "backend": backend, **peer})
        log("[peers] plain sqlite3 limits of this disk ...")
        try:
            limits = sqlite_limits()
        except Exception as exc:  # the run goes on without the disk's ratios
            limits = {"error": repr(exc)}
        emit({"system": "disk", "backend": backend, **limits})
        ours = run_matrix(
            ["W1", "W2", "W3", "W4", "W5", "W6"],
            stores,
            [backend],
            sizes,
            timeout=timeout,
            out=args.out,
        )
        all_ours += ours
        rows, durable, text = tables_for(backend, peer, limits, ours, stores, sizes.n1)
        for row in rows + durable:
            emit(row)
        tables.append(text)
        if backend == "asyncio" and not args.no_durable:
            frameworks = run_durable_peers(args, timeout)
            for r in frameworks:
                emit(r)
            if frameworks:
                tables.append(
                    "#### Durable peers (asyncio)\n\n" + durable_table(frameworks, ours, backend)
                )
    print()
    print(f"sessionvisor beside its floors, {env_line()}, total {time.perf_counter() - t0:.0f} s")
    print(f"sizes: {json.dumps(dataclasses.asdict(sizes))}")
    print()
    print("\n\n".join(tables))
    print()
    print(results_table(all_ours))
    return 1 if any("error" in r for r in all_ours) else 0


if __name__ == "__main__":
    sys.exit(main())
