"""The servers a test needs: PostgreSQL and Redis on their usual ports, or a
redis-server of the test's own (``RedisServer``) that it may stop and start.

Outside CI a missing server skips the test with the reason; in CI (``CI`` set)
it fails, since scripts/test-services.sh provides every one.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["IN_CI", "RedisServer", "absent", "port_open", "require_server"]

IN_CI = bool(os.environ.get("CI"))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_server(name: str, port: int) -> None:
    """Skip (outside CI) or fail (in CI) when a server the test needs is absent."""
    if port_open(port):
        return
    message = f"{name} is not listening on 127.0.0.1:{port}"
    if IN_CI:
        pytest.fail(f"{message}; CI must run this test (scripts/test-services.sh starts it)")
    pytest.skip(f"{message}; start it to run this test")


def absent(message: str) -> NoReturn:
    """Skip (outside CI) or fail (in CI): something the test needs is not installed."""
    if IN_CI:
        pytest.fail(f"{message}; CI must run this test (scripts/test-services.sh provides it)")
    pytest.skip(f"{message}; install it to run this test")


class RedisServer:
    """A redis-server process on a port of its own, keeping nothing on disk."""

    def __init__(self, binary: str, workdir: Path) -> None:
        from sessionvisor.testing import free_port

        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from sessionvisor.testing import wait_until_sync

        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_sync(
            lambda: port_open(self.port),
            timeout=10,
            interval=0.02,
            message=f"redis-server listens on {self.port}",
        )

    def stop(self) -> None:
        from sessionvisor.testing import wait_until_sync

        if self.process is None:
            return
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None
        wait_until_sync(
            lambda: not port_open(self.port),
            timeout=10,
            interval=0.02,
            message=f"port {self.port} is closed",
        )
