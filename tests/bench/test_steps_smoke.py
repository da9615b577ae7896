"""``bench/steps.py`` (W9) keeps working: a tiny run on SQLite.

Not a benchmark: no figure is asserted, only that the run printed the W9 and W3
objects with every figure and the table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_quick_w9_run_prints_its_figures_beside_w3(tmp_path: Path) -> None:
    out = tmp_path / "w9.jsonl"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "steps.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"bench/steps.py --quick failed:\n{proc.stderr[-4000:]}"
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    w9, w3 = rows
    assert (w9["workload"], w9["store"]) == ("W9", "sqlite")
    assert (w3["workload"], w3["store"]) == ("W3", "sqlite")
    for kind in ("idem", "nonidem"):
        assert w9[f"us_per_step_{kind}"] > 0 and w9[f"us_per_step_{kind}_full_trail"] > 0
        assert w9[f"steps_per_s_{kind}"] > 0
    assert w9["us_per_commit"] > 0 and w9["us_per_save"] > 0
    assert w3["msgs_per_s"] > 0 and w3["order_violations"] == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert "| (b) idempotent steps/s, 50 conversations |" in proc.stdout
