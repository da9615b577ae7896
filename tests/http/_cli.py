"""Starting the command line (``python -m sessionvisor ...``) for a test.

``run_cli`` yields the process and its banner once it serves; ``running``
yields a ``Running``, which keeps every line the process prints (stdout and
stderr), as an operator's log collector would. Give either a port from
``sessionvisor.testing.free_port``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from sessionvisor.testing import wait_until_sync

REPO = Path(__file__).resolve().parents[2]
#: How long a test waits for the command line to start, print or stop.
DEADLINE = 30.0


@contextmanager
def run_cli(*args: str, cwd: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``python -m sessionvisor ARGS``; yield it and its banner line once it serves."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionvisor", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        banner = ""
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "open http://" in line:
                banner = line.strip()
                break
        assert banner, f"no banner; exit code {proc.poll()}"
        yield proc, banner
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    return out


class Running:
    """``python -m sessionvisor ARGS`` in a subprocess; every line it prints is kept."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sessionvisor", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = DEADLINE) -> None:
        """Return once a line containing ``text`` was printed."""

        def seen() -> bool:
            return self._eof or any(text in line for line in self.lines)

        with self._changed:
            self._changed.wait_for(seen, timeout)
            if any(text in line for line in self.lines):
                return
        pytest.fail(f"never printed {text!r}; exit code {self.proc.poll()}; output:\n{self.output}")

    def wait_healthy(self, port: int, timeout: float = DEADLINE) -> None:
        """Return once ``GET /healthz`` answers 200 (for a server told to print nothing)."""

        def healthy() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"exited with {self.proc.returncode}; output:\n{self.output}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until_sync(
            healthy,
            timeout=timeout,
            interval=0.05,
            message=lambda: f"/healthz answers 200; output:\n{self.output}",
        )

    def stop(self) -> str:
        """Ctrl+C, wait for the exit and the last line; return the whole output."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(DEADLINE)
        self._reader.join(DEADLINE)
        assert self.proc.returncode == 0, self.output
        return self.output


@contextmanager
def running(*args: str, cwd: Path, healthy_on: int | None = None) -> Iterator[Running]:
    """The CLI, once it serves: it printed its banner, or ``/healthz`` answers on
    port ``healthy_on``."""
    server = Running(list(args), cwd)
    try:
        if healthy_on is None:
            server.wait_for("open http://")
        else:
            server.wait_healthy(healthy_on)
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
