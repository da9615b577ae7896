"""Profile the timed section of one workload and print its top functions by cumulative share.

Runs in this process (no subprocess), with pyinstrument (statistical, every task
of the thread, low overhead) when it is installed, else cProfile. Only the
section the workload times is profiled (its setup and the drain are not).

    .venv/bin/python bench/profile_hot.py W2                      # W2, memory store, asyncio
    .venv/bin/python bench/profile_hot.py W1 --store sqlite --n1 5000
    .venv/bin/python bench/profile_hot.py W3 --profiler cprofile --top 40
    .venv/bin/python bench/profile_hot.py W2 --html /tmp/w2.html   # pyinstrument's flame view
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
from collections import defaultdict
from contextlib import contextmanager
from typing import Any

import _harness
from _harness import WORKLOADS, add_size_flags, sizes_from_args, worker

# Frames of the event loop itself: on every stack, so they say nothing.
LOOP_PLUMBING = (
    "asyncio/base_events.py",
    "asyncio/events.py",
    "asyncio/runners.py",
    "asyncio/tasks.py",
    "asyncio/futures.py",
    "selectors.py",
    "trio/_core/_run.py",
    "trio/_core/_io_epoll.py",
    "anyio/_core/_eventloop.py",
    "outcome/",
    "<frozen",
)


def _plumbing(path: str) -> bool:
    return any(part in path for part in LOOP_PLUMBING)


def pyinstrument_top(session: Any, top: int) -> list[dict]:
    """Cumulative seconds per function over the call tree (recursion counted once)."""
    root = session.root_frame()
    if root is None:
        return []
    total = root.time
    acc: dict[tuple[str, str, int], float] = defaultdict(float)

    def walk(frame: Any, active: set) -> None:
        key = (frame.function or "?", frame.file_path_short or "?", frame.line_no or 0)
        first = key not in active and not frame.is_synthetic
        if first:
            acc[key] += frame.time
            active.add(key)
        for child in frame.children:
            walk(child, active)
        if first:
            active.discard(key)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
    walk(root, set())
    rows = [
        {"function": f, "where": f"{path}:{line}", "cum_pct": 100.0 * t / total, "cum_s": t}
        for (f, path, line), t in acc.items()
        if not _plumbing(path)
    ]
    rows.sort(key=lambda r: -r["cum_s"])
    return rows[:top]


def cprofile_top(prof: cProfile.Profile | pstats.Stats, top: int) -> list[dict]:
    stats = prof if isinstance(prof, pstats.Stats) else pstats.Stats(prof)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (path, line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if _plumbing(path):
            continue
        short = "/".join(path.split("/")[-3:])
        rows.append(
            {"function": func, "where": f"{short}:{line}", "cum_pct": 100 * ct / total, "cum_s": ct}
        )
    rows.sort(key=lambda r: -r["cum_s"])
    return rows[:top]


def memory_profile(args: Any, sizes: Any) -> int:
    """Allocation sites of what the timed section left allocated (after a full gc)."""
    import gc
    import tracemalloc

    snaps: list[Any] = []

    @contextmanager
    def traced() -> Any:
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        try:
            yield
        finally:
            gc.collect()
            snaps.append((before, tracemalloc.take_snapshot()))
            tracemalloc.stop()

    _harness._Measured.factory = traced
    result = worker(args.workload, args.store, args.backend, sizes)
    print(_harness.headline(result))
    before, after = snaps[0]
    stats = after.compare_to(before, "lineno")
    per = sizes.n1 if args.workload.startswith("W1") else 1
    total = sum(st.size_diff for st in stats)
    unit = "bytes per session" if per > 1 else "bytes"
    print(f"\ntracemalloc: {total / per:,.0f} {unit} still allocated after the section")
    print(f"{unit:>18}  {'blocks':>8}  where")
    for st in stats[: args.top]:
        frame = st.traceback[0]
        where = "/".join(frame.filename.split("/")[-3:]) + f":{frame.lineno}"
        print(f"{st.size_diff / per:18,.0f}  {st.count_diff / per:8.2f}  {where}")
    return 0


def _combine(kind: str, profs: list[Any]) -> Any:
    if kind == "pyinstrument":
        from pyinstrument.session import Session

        session = profs[0].last_session
        for prof in profs[1:]:
            session = Session.combine(session, prof.last_session)
        return session
    merged = pstats.Stats(profs[0])
    for prof in profs[1:]:
        merged.add(prof)
    return merged


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", choices=[*WORKLOADS, "W1-parked"])
    ap.add_argument("--store", choices=["memory", "sqlite"], default="memory")
    ap.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    ap.add_argument("--profiler", choices=["pyinstrument", "cprofile"], default=None)
    ap.add_argument(
        "--memory",
        action="store_true",
        help="instead of time: where the memory the section keeps was allocated (tracemalloc); "
        "W1 divides it by N to give bytes per idle session",
    )
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--html", default=None, help="write pyinstrument's HTML report here")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    ap.add_argument("--quick", action="store_true", help="start from the --quick sizes")
    add_size_flags(ap)
    args = ap.parse_args()
    sizes = sizes_from_args(args)
    if args.workload == "W2":
        sizes.w2_reps = 1  # one repetition is enough to profile

    kind = args.profiler
    if kind is None:
        try:
            import pyinstrument  # noqa: F401

            kind = "pyinstrument"
        except ImportError:
            kind = "cprofile"
    holder: dict[str, Any] = {}

    @contextmanager
    def profiled() -> Any:
        if kind == "pyinstrument":
            from pyinstrument import Profiler

            prof = Profiler(interval=0.0005, async_mode="disabled")
            prof.start()
            try:
                yield
            finally:
                prof.stop()
                holder.setdefault("pyinstrument", []).append(prof)
        else:
            prof = cProfile.Profile()
            prof.enable()
            try:
                yield
            finally:
                prof.disable()
                holder.setdefault("cprofile", []).append(prof)

    if args.memory:
        return memory_profile(args, sizes)
    _harness._Measured.factory = profiled
    result = worker(args.workload, args.store, args.backend, sizes)
    print(_harness.headline(result))
    profs = holder.get(kind, [])
    if args.workload != "W2" and len(profs) > 1:
        # W2 times two different sections (bounded history, then growing): keep them
        # apart. Elsewhere repeated sections (one per W6 wake) are one profile.
        profs = [_combine(kind, profs)]
    for i, prof in enumerate(profs):
        label = f"section {i + 1}" if len(profs) > 1 else "timed section"
        if kind == "pyinstrument":
            session = prof if not hasattr(prof, "last_session") else prof.last_session
            rows = pyinstrument_top(session, args.top)
            wall = session.duration
            if args.html:
                from pyinstrument.renderers import HTMLRenderer

                path = args.html if i == 0 else args.html.replace(".html", f"-{i + 1}.html")
                with open(path, "w") as fh:
                    fh.write(HTMLRenderer().render(session))
        else:
            rows = cprofile_top(prof, args.top)
            wall = None
        print()
        print(
            f"{args.workload} {args.store} {args.backend}, {label}, {kind}"
            + (f", {wall:.2f} s sampled" if wall else "")
        )
        print(f"{'cum %':>6}  function  (where)")
        for r in rows:
            print(f"{r['cum_pct']:6.1f}  {r['function']}  ({r['where']})")
        if args.json:
            print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
