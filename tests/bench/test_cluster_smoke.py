"""``bench/cluster.py`` keeps working: a tiny run of both parts.

Not a benchmark: no figure is asserted, only that every mode answered every
message in order, every failover round was measured and answered exactly once,
and the tables were printed. It needs PostgreSQL (127.0.0.1:5432) and the
redis-server binary (the bench starts its own).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._support.servers import IN_CI, require_server

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_a_tiny_cluster_bench_run_measures_both_parts(tmp_path: Path) -> None:
    require_server("PostgreSQL", 5432)
    if shutil.which("redis-server") is None:
        message = "the redis-server binary is not on PATH"
        if IN_CI:
            pytest.fail(f"{message}; CI must run this test")
        pytest.skip(message)
    out = tmp_path / "cluster.jsonl"
    command = [sys.executable, str(REPO / "bench" / "cluster.py"), "--out", str(out)]
    command += ["--w2-calls", "10", "--w2-reps", "1", "--w3-sessions", "3", "--w3-msgs", "3"]
    command += ["--failovers", "2", "--lease-ttl", "1.5"]
    proc = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, f"bench/cluster.py failed:\n{proc.stderr[-4000:]}"
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    modes = [r for r in rows if "mode" in r]
    assert {(r["mode"], r["workload"]) for r in modes} == {
        (mode, workload)
        for mode in ("local", "cluster, to the owner", "cluster, via another node")
        for workload in ("W2", "W3")
    }
    for row in modes:
        assert row.get("wrong_replies", 0) == 0, row
        assert row.get("order_violations", 0) == 0, row
        assert row.get("sessions_with_wrong_final_state", 0) == 0, row
        if row["mode"] != "local":
            assert list(row["leases"]) == ["n0"], row  # the first message's node owns it
    assert len([r for r in rows if "ratio" in r]) == 4
    (fail,) = [r for r in rows if r.get("part") == "failover"]
    assert fail["answer"]["measured"] == 2 - fail["answered_before_kill"]
    assert fail["conversations_without_exactly_one_answer"] == 0
    assert fail["pause"]["stale_writes"] == 0  # SIGSTOP rounds: the woken owner wrote nothing
    assert fail["survivor_exit_codes_after_sigterm"] == [0, 0]
    assert len(out.read_text().splitlines()) == len(rows)
    assert "| W3 messages/s" in proc.stdout
    assert "| kill -9: the answer is in the store |" in proc.stdout
    assert "| kill -9: a survivor holds the lease |" in proc.stdout
