"""``bench/timers.py`` (W10) keeps working: a tiny run on MemoryStore and SQLite.

Not a benchmark: no figure is asserted beyond every scheduled timer firing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_tiny_w10_run_fires_every_timer() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "timers.py"), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"bench/timers.py failed:\n{proc.stderr[-4000:]}"
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    by_part = {row["part"]: row for row in rows}
    assert by_part["schedule"]["bytes_per_timer"] > 0
    fire = by_part["fire"]
    assert fire["fired"] == fire["scheduled"] > 0, fire
    assert fire["lateness_p99_ms"] >= fire["lateness_p50_ms"], fire
