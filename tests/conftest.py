"""Shared fixtures: every async test runs on asyncio and on trio; a fresh
PostgreSQL database (``pg_dsn``) and a redis-server of the module's own
(``redis_server``) for the tests that need real servers."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest

from tests._support.servers import RedisServer, absent, require_server
from tests._support.sql import POSTGRES_DSN, sql


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    """A DSN to a database created for this module, dropped afterwards."""
    require_server("PostgreSQL", 5432)
    from psycopg.conninfo import make_conninfo

    name = f"sv_cluster_{uuid.uuid4().hex[:12]}"
    sql(POSTGRES_DSN, f"CREATE DATABASE {name}")
    try:
        yield make_conninfo(POSTGRES_DSN, dbname=name)
    finally:
        sql(POSTGRES_DSN, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the module's own on a free port (a test may stop and start it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        absent("the redis-server binary is not on PATH")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
