"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

import os
import socket

import pytest

IN_CI = bool(os.environ.get("CI"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


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
