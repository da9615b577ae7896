"""``--limit-concurrency`` and ``--timeout-keep-alive``: uvicorn's bounds, from the CLI.

uvicorn has no deadline for a request body; these are what the server itself
offers against many slow or idle clients (docs/operations.md, "Slow clients").
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from sessionvisor.testing import free_port, wait_until_sync

from ._cli import DEADLINE, running


def test_limit_concurrency_answers_503_beyond_the_limit(tmp_path: Path) -> None:
    port = free_port()
    args = ["demo", "--port", str(port), "--store", "memory", "--limit-concurrency", "2"]
    with running(*args, cwd=tmp_path) as server:
        base = f"http://127.0.0.1:{port}"
        events = "/conversations/c-1/events"
        with (
            httpx.Client(base_url=base, timeout=10) as viewer,
            viewer.stream("GET", events, headers={"X-User": "a"}) as sse,
        ):
            assert sse.status_code == 200
            # The stream holds one connection: a second one reaches the limit of 2.
            with httpx.Client(base_url=base, timeout=10) as other:
                assert other.get("/healthz").status_code == 503

        # Once the stream is closed, the server takes requests again.
        def serving() -> bool:
            with httpx.Client(base_url=base, timeout=10) as other:
                return other.get("/healthz").status_code == 200

        wait_until_sync(
            serving, timeout=DEADLINE, interval=0.01, message="/healthz answers 200 again"
        )
        out = server.stop()
    assert "Exceeded concurrency limit" in out


def test_timeout_keep_alive_closes_an_idle_connection(tmp_path: Path) -> None:
    port = free_port()
    args = ["demo", "--port", str(port), "--store", "memory", "--timeout-keep-alive", "1"]
    with running(*args, cwd=tmp_path) as server:
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while b"\r\n\r\n" not in received or not received.endswith(b"}"):
                chunk = sock.recv(4096)
                assert chunk, received
                received += chunk
            assert received.startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            # The socket's own timeout is the deadline: recv returns b"" once the server closes.
            assert sock.recv(4096) == b""
            assert time.monotonic() - started < 4  # well before uvicorn's default of 5 s
        server.stop()
