"""``bench/stream.py`` (W7) keeps working: a tiny run against both targets.

Not a benchmark: no figure is asserted, only that both servers streamed every
delta to every client and the ratios were printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_tiny_w7_run_streams_every_delta_on_both_targets(tmp_path: Path) -> None:
    out = tmp_path / "w7.jsonl"
    command = [sys.executable, str(REPO / "bench" / "stream.py"), "--clients", "20"]
    command += ["--deltas", "10", "--out", str(out)]
    proc = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"bench/stream.py failed:\n{proc.stderr[-4000:]}"
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    by_target = {row["target"]: row for row in rows}
    assert set(by_target) == {"floor", "sessionvisor", "sessionvisor/floor"}
    for target in ("floor", "sessionvisor"):
        row = by_target[target]
        assert row["events_received"] == row["events_expected"] == 20 * 10, row
        assert not row["timed_out"] and row["clients_cut_off"] == 0, row
        assert row["latency_p99_ms"] >= row["latency_p50_ms"] > 0, row
    assert by_target["sessionvisor/floor"]["events_per_s"] > 0
    assert len(out.read_text().splitlines()) == 3
    assert "| sessionvisor/floor |" in proc.stdout
