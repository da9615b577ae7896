"""The runtime's modules stay small enough to read: each one job, at most 450 lines."""

from __future__ import annotations

from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "sessionvisor"
LIMIT = 450


@pytest.mark.parametrize("package", ["sessions", "cluster"])
def test_no_module_of_the_runtime_is_over_450_lines(package: str) -> None:
    sizes = {
        path.name: len(path.read_text().splitlines())
        for path in sorted((PACKAGE / package).glob("*.py"))
    }
    over = {name: lines for name, lines in sizes.items() if lines > LIMIT}
    assert not over, f"{package}/ modules over {LIMIT} lines (split by job): {over}"
