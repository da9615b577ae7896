"""The README's chat loop is real code: it runs and prints what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_chat_loop_runs_end_to_end(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"## A complete chat loop\n\n```python\n(.*?)```", readme, re.S)
    assert match, "README lost its chat loop section"
    script = tmp_path / "chat_loop_from_readme.py"
    script.write_text(match.group(1))

    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    # structlog's default configuration logs to stdout too: keep only what the loop prints.
    lines = [
        line.strip()
        for line in done.stdout.splitlines()
        if line.strip() and not re.match(r"\d{4}-\d\d-\d\d ", line)
    ]
    assert "agent> You said 'Hello'" in lines
    assert "? Really delete my notes?" in lines
    assert "agent> Deleted." in lines
    assert lines[-1] == "False"  # stopped for inactivity, kept in chat.db
    assert (tmp_path / "chat.db").exists()
