"""``--log-format json``: every line the server prints is one JSON object.

The CLI runs in a subprocess, as an operator runs it, and its whole output is
parsed line by line: structlog's lines (the session's carry ``conversation_id``
and ``agent_id``) and uvicorn's own server and access lines alike.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessionvisor.testing import free_port, wait_until_sync

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 30.0


def parse_lines(out: str) -> list[dict[str, Any]]:
    lines = [line for line in out.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\nwhole output:\n{out}")
        assert isinstance(record, dict), line
        parsed.append(record)
    return parsed


def start_demo(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "sessionvisor", "demo", "--port", str(port)]
    command.extend(["--db", str(tmp_path / "demo.db"), "--word-delay", "0", *extra])
    return subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_serving(proc: subprocess.Popen[str]) -> list[str]:
    """Read lines until the server says it serves; return them."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if '"serving"' in line:
            return seen
    pytest.fail(f"the server never said it serves; exit code {proc.poll()}; output: {seen}")


def test_json_log_format_prints_one_json_object_per_line_with_the_session_ids(
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = start_demo(tmp_path, port, "--log-format", "json", "--log-level", "info")
    try:
        head = wait_serving(proc)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers={"X-User": "alice"}, timeout=10) as client:
            # "crash" makes the demo agent raise: the session logs the failure and restarts.
            sent = client.post("/conversations/c-logs/messages", json={"content": "crash now"})
            assert sent.status_code == 202, sent.text
            agent_id = sent.json()["agent_id"]
            history: dict[str, Any] = {}

            def restarted() -> bool:
                history.update(client.get("/conversations/c-logs").json())
                # The restarted agent notes the crash.
                return any(m["role"] == "system" for m in history["messages"])

            wait_until_sync(
                restarted,
                timeout=DEADLINE,
                interval=0.02,
                message=lambda: f"the demo agent restarted: {history}",
            )
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, rest
    records = parse_lines("".join(head) + rest)

    for record in records:
        assert {"event", "level", "timestamp"} <= set(record), record
        assert record["timestamp"].endswith("Z"), record
    events = {r["event"]: r for r in records}
    assert "serving" in events
    # The demo's trust-the-client scope is flagged, as a JSON warning too.
    assert events["unauthenticated_scope"]["level"] == "warning"
    # The session's own lines name the conversation and the agent.
    for name in ("turn_failed", "session_restarting", "session_restarted"):
        assert name in events, sorted(events)
        assert events[name]["conversation_id"] == "c-logs"
        assert events[name]["agent_id"] == agent_id
    assert events["turn_failed"]["level"] == "warning"
    # uvicorn's lines are JSON too, access log included.
    assert any(r.get("logger") == "uvicorn.access" and "POST" in r["event"] for r in records)
    assert any(r.get("logger") == "uvicorn.error" for r in records)
    # Draining on Ctrl+C is logged by the supervisor, as JSON.
    assert "supervisor_drained" in events


def test_console_log_format_stays_the_default(tmp_path: Path) -> None:
    port = free_port()
    proc = start_demo(tmp_path, port)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + DEADLINE
        banner = ""
        while time.monotonic() < deadline and not banner:
            line = proc.stdout.readline()
            if not line:
                break
            if "open http://" in line:
                banner = line
        assert banner.startswith("sessionvisor demo: open http://"), banner
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
