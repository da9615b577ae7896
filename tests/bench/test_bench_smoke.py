"""The benchmark command keeps working: ``bench/run.py --quick`` runs every workload.

Benchmarks are not tests: no figure is asserted, only that each workload ran on
both stores and printed its JSON object.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6")
STORES = ("memory", "sqlite")


@pytest.mark.slow
def test_quick_run_prints_every_workload_for_both_stores(tmp_path: Path) -> None:
    out = tmp_path / "bench.jsonl"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"bench/run.py --quick failed:\n{proc.stderr[-4000:]}"
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    seen = {(r["workload"], r["store"]) for r in results}
    missing = [(w, s) for w in WORKLOADS for s in STORES if (w, s) not in seen]
    assert not missing, f"no JSON object for {missing}"
    assert all("error" not in r and r["backend"] == "asyncio" for r in results), results
    assert [json.loads(line) for line in out.read_text().splitlines()] == results
    assert "| W1 | memory |" in proc.stdout  # the table at the end
