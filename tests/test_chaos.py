"""The randomized fault checker (``chaos/``), bounded, in the test suite.

Each case runs real ``python -m sessionvisor demo`` processes through the
public HTTP API while a nemesis kills them with SIGKILL (at random, and just
after an acknowledged answer or send), then checks every guarantee from the
recorded history: no acknowledged message lost or doubled, order kept, every
acknowledged answer carried out once, every conversation settled. Two fixed
seeds per store, plus one random seed (printed, so a failure can be
replayed with ``python -m chaos.run --seed N``). ``make chaos`` runs longer.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests._support.servers import IN_CI, port_open

ROOT = Path(__file__).resolve().parent.parent
FAULTS = "kill,kill-after-resume,kill-after-send,kill-in-recovery"
RANDOM_SEED = random.SystemRandom().randrange(1_000, 1_000_000)
SEEDS = [1, 2, RANDOM_SEED]


def _chaos(seed: int, store: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "chaos.run",
        "--seed",
        str(seed),
        "--ops",
        "120",
        "--store",
        store,
        "--faults",
        FAULTS,
        "--interval",
        "0.5",
        "2",
        "--out",
        str(tmp_path),
    ]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False
    )


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_no_acknowledged_command_is_lost_or_doubled_under_kill_9(
    store: str, seed: int, tmp_path: Path
) -> None:
    if store == "postgres" and not port_open(5432):
        if IN_CI:
            pytest.fail("CI needs PostgreSQL on 127.0.0.1:5432")
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    print(f"chaos seed {seed} ({store})")  # shown when the test fails
    done = _chaos(seed, store, tmp_path)
    report = done.stdout[-6000:] + done.stderr[-3000:]
    assert done.returncode == 0, f"seed {seed} ({store}) found violations:\n{report}"
    assert "no violations" in done.stdout, report
