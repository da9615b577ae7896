"""``--log-level`` governs the library's own lines, in console mode as in JSON."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from sessionvisor.testing import free_port

from ._cli import running


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_log_level_warning_drops_the_library_info_lines(tmp_path: Path, log_format: str) -> None:
    port = free_port()
    args = ["demo", "--port", str(port), "--store", "memory", "--word-delay", "0"]
    args += ["--log-level", "warning", "--log-format", log_format]
    # At warning level the JSON banner (an info line) is not printed.
    with running(*args, cwd=tmp_path, healthy_on=port) as server:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            # "crash" makes the demo agent raise: session_started (info) comes first,
            # then turn_failed and session_restarting (warnings).
            sent = client.post(
                "/conversations/c-1/messages", json={"content": "crash"}, headers={"X-User": "a"}
            )
            assert sent.status_code == 202, sent.text
        server.wait_for("session_restarting")
        out = server.stop()
    assert "turn_failed" in out
    for info in ("session_started", "session_restarted", "supervisor_drained"):
        assert info not in out, out
    if log_format == "console":
        assert "[info" not in out, out
    else:
        levels = {json.loads(line)["level"] for line in out.splitlines() if line.startswith("{")}
        assert levels <= {"warning", "error", "critical"}, levels


def test_log_level_debug_keeps_the_info_lines(tmp_path: Path) -> None:
    port = free_port()
    args = ["demo", "--port", str(port), "--store", "memory", "--word-delay", "0"]
    with running(*args, "--log-level", "debug", cwd=tmp_path) as server:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            sent = client.post(
                "/conversations/c-1/messages", json={"content": "hi"}, headers={"X-User": "a"}
            )
            assert sent.status_code == 202, sent.text
        server.wait_for("session_started")
        out = server.stop()
    assert "[info" in out
