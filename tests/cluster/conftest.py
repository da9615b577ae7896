"""Real servers for the cluster tests: a fresh PostgreSQL database per module
and a redis-server of their own on a free port, which a test may stop and
start again. Outside CI a missing server skips with the reason; in CI
(CI=true) it fails, since scripts/test-services.sh provides both.

The cluster mode runs on asyncio only (psycopg's async API, redis.asyncio), so
``anyio_backend`` is asyncio here; a test on trio checks the clear refusal.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import IN_CI, port_open, require_server

if TYPE_CHECKING:
    from ._nodes import Nodes

ADMIN_DSN = os.environ.get(
    "SESSIONVISOR_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _absent(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message}; CI must run this test (scripts/test-services.sh provides it)")
    pytest.skip(f"{message}; install it to run this test")


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    """A DSN to a database created for this module, dropped afterwards."""
    require_server("PostgreSQL", 5432)
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"sv_cluster_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    try:
        yield make_conninfo(ADMIN_DSN, dbname=name)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


def sql(dsn: str, query: str, *params: object) -> list[tuple[object, ...]]:
    """Run one statement on a connection of its own (what another process sees)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def wait_until(condition: object, what: str, timeout: float = 10.0) -> None:
    """Poll ``condition()`` until true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server process on a port of its own, keeping nothing on disk."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
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
        wait_until(lambda: port_open(self.port), f"redis-server listens on {self.port}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None
        wait_until(lambda: not port_open(self.port), f"port {self.port} is closed")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        _absent("the redis-server binary is not on PATH")
    assert binary is not None
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nodes(pg_dsn: str, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Nodes]:
    """Three demo node processes of one cluster (see ``_nodes.cluster_nodes``)."""
    from ._nodes import cluster_nodes

    async with cluster_nodes(pg_dsn, redis_server.url, tmp_path) as started:
        yield started
