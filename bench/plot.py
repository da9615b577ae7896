"""How W1 grows with the number of sessions: µs per cold start and RSS bytes per idle session.

Runs W1 at each N (default 1k, 10k, 100k) in a fresh process per point, for
sessionvisor (memory store, and SQLite unless ``--stores memory``) and for the
raw-anyio floor (``bench/peers/raw_anyio.py``), then writes the plot
(matplotlib, Agg) and the numbers as JSON.

    .venv/bin/python bench/plot.py    # writes docs/scaling.png and bench/results/scaling.json
    .venv/bin/python bench/plot.py --ns 1000,5000 --stores memory --no-peer --png /tmp/s.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _harness import (
    PEERS_DIR,
    REPO_DIR,
    STORES,
    Sizes,
    env_line,
    log,
    run_peer_raw_anyio,
    spawn_workload,
)
from run import parse_list

# An Erlang/OTP process's figure measured on the same machine kind, for reference.
ERLANG_BYTES = 3_259


def collect(ns: list[int], stores: list[str], backend: str, peers_dir: Path | None) -> dict:
    series: dict[str, list[dict]] = {}
    for n in ns:
        sizes = Sizes(n1=n)
        timeout = 600 + n * 0.02
        for store in stores:
            log(f"[plot] sessionvisor {store} {backend} N={n:,} ...")
            r = spawn_workload("W1", store, backend, sizes, timeout=timeout)
            if "error" in r:
                log(f"[plot]   failed: {r['error']}")
                continue
            series.setdefault(f"sessionvisor, {store} store, idle", []).append(
                {
                    "n": n,
                    "us_per_start": r["us_per_start"],
                    "bytes_per_session": r["bytes_per_session"],
                    "drain_s": r["drain_s"],
                    "rss_peak": r["rss_peak"],
                }
            )
            if "bytes_per_session_parked" in r:
                series.setdefault(f"sessionvisor, {store} store, parked", []).append(
                    {
                        "n": n,
                        "us_per_start": r["us_per_start_parked"],
                        "bytes_per_session": r["bytes_per_session_parked"],
                        "drain_s": r["drain_s_parked"],
                        "rss_peak": r["rss_peak_parked"],
                    }
                )
        if peers_dir is not None:
            log(f"[plot] raw anyio peer {backend} N={n:,} ...")
            p = run_peer_raw_anyio(peers_dir, backend, sizes, timeout=timeout, only="w1")
            if "error" in p:
                log(f"[plot]   peer failed: {p['error']}")
                continue
            series.setdefault("raw anyio peer (task + stream per key)", []).append(
                {
                    "n": n,
                    "us_per_start": p["w1"]["us_per_start"],
                    "bytes_per_session": p["w1"]["bytes_per_actor"],
                }
            )
    return series


def draw(series: dict[str, list[dict]], png: Path, backend: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {"memory": "tab:blue", "sqlite": "tab:orange", "peer": "tab:green"}
    for name, points in series.items():
        xs = [p["n"] for p in points]
        kind = "peer" if "peer" in name else ("sqlite" if "sqlite" in name else "memory")
        style = "--" if kind == "peer" else (":" if "parked" in name else "-")
        marker = "s" if "parked" in name else "o"
        kw = {"color": colors[kind], "linestyle": style, "marker": marker, "label": name}
        ax1.plot(xs, [p["us_per_start"] for p in points], **kw)
        ax2.plot(xs, [p["bytes_per_session"] for p in points], **kw)
    ax1.axhline(40, color="black", linestyle="-.", label="target: 40 µs")
    ax2.axhline(2_000, color="black", linestyle="-.", label="target: 2,000 B")
    ax2.axhline(ERLANG_BYTES, color="grey", linestyle="-.", label="Erlang process (3,259 B)")
    ax2.set_ylim(bottom=500)
    ax1.set_title(f"W1 cold start ({backend})")
    ax1.set_ylabel("µs per start (incl. one request)")
    ax2.set_title("RSS per live session (idle; parked = hibernated)")
    ax2.set_ylabel("bytes per session")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("live sessions (N)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", default="1000,10000,100000", help="comma list of session counts")
    ap.add_argument("--stores", default=",".join(STORES))
    ap.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    ap.add_argument("--peers-dir", type=Path, default=PEERS_DIR)
    ap.add_argument("--no-peer", action="store_true", help="leave the raw-anyio peer out")
    ap.add_argument("--png", type=Path, default=REPO_DIR / "docs" / "scaling.png")
    ap.add_argument("--json", type=Path, default=REPO_DIR / "bench" / "results" / "scaling.json")
    ap.add_argument(
        "--from-json", type=Path, default=None, help="only redraw the plot from this JSON"
    )
    args = ap.parse_args()
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        draw(data["series"], args.png, data.get("backend", "asyncio"))
        print(f"wrote {args.png}")
        return 0
    ns = [int(x) for x in args.ns.split(",") if x.strip()]
    stores = parse_list(args.stores, STORES, "store")
    peers_dir: Path | None = None
    if not args.no_peer:
        if (args.peers_dir / "raw_anyio.py").is_file():
            peers_dir = args.peers_dir
        else:
            log(f"[plot] no raw-anyio peer at {args.peers_dir}; plotting sessionvisor alone")
    t0 = time.perf_counter()
    series = collect(ns, stores, args.backend, peers_dir)
    data = {
        "what": "W1 at several N: µs per cold start, RSS bytes per live idle session",
        "environment": env_line(),
        "backend": args.backend,
        "seconds": round(time.perf_counter() - t0, 1),
        "series": series,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    draw(series, args.png, args.backend)
    print(json.dumps(data, indent=2))
    print(f"wrote {args.png} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
