"""What the disk allows: plain ``sqlite3`` on the same disk as the benchmarks' files.

Two figures, both in WAL mode with ``synchronous=FULL`` (sessionvisor's
default): the time of one fsync'd commit of one row, and the rows per second
of 20,000 rows written in 200-row transactions. A durable turn needs at least
one commit, and many conversations saving at once need far fewer commits than
saves; these are the floors ``bench/peers.py`` divides sessionvisor's SQLite
figures by. Rows are ~150 bytes of JSON, the size of a short chat message.

    .venv/bin/python bench/disk.py            # prints one JSON object
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BODY = json.dumps(
    {
        "id": "0" * 32,
        "role": "user",
        "content": "lorem ipsum dolor sit amet, consectetur adipiscing elit",
        "created_at": "2026-01-01T00:00:00Z",
        "metadata": {},
    }
)


def sqlite_limits(
    directory: str | Path | None = None, *, commits: int = 300, rows: int = 20_000, per: int = 200
) -> dict[str, Any]:
    """Measure the two floors in a fresh file under ``directory`` (default: the temp dir)."""
    with tempfile.TemporaryDirectory(prefix="svdisk-", dir=directory) as tmp:
        conn = sqlite3.connect(Path(tmp) / "limits.db", isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE t (k TEXT, n INTEGER, body TEXT, PRIMARY KEY (k, n))")
            times = []
            for i in range(commits):
                t0 = time.perf_counter_ns()
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t VALUES ('one', ?, ?)", (i, BODY))
                conn.execute("COMMIT")
                times.append(time.perf_counter_ns() - t0)
            t0 = time.perf_counter_ns()
            for batch in range(rows // per):
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT INTO t VALUES (?, ?, ?)",
                    [(f"k{batch}", i, BODY) for i in range(per)],
                )
                conn.execute("COMMIT")
            seconds = (time.perf_counter_ns() - t0) / 1e9
        finally:
            conn.close()
    return {
        "what": "plain sqlite3, WAL, synchronous=FULL, same disk",
        "us_per_commit": statistics.median(times) / 1e3,
        "us_per_commit_p90": sorted(times)[int(0.9 * (len(times) - 1))] / 1e3,
        "rows": rows,
        "rows_per_commit": per,
        "rows_per_s": rows // per * per / seconds,
    }


if __name__ == "__main__":
    print(json.dumps(sqlite_limits(sys.argv[1] if len(sys.argv) > 1 else None)))
