"""``store``: the three stores a timer test runs against (PostgreSQL skips outside CI
when no server answers, see ``tests/_support/servers.require_server``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests._support.servers import require_server
from tests.state._backends import Backend, MemoryBackend, PostgresBackend, SQLiteBackend


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
async def backend(
    request: pytest.FixtureRequest, anyio_backend: str, tmp_path: Path
) -> AsyncIterator[Backend]:
    kind = request.param
    made: Backend
    if kind == "memory":
        made = MemoryBackend()
    elif kind == "sqlite":
        made = SQLiteBackend(tmp_path / "state.db")
    else:
        require_server("PostgreSQL", 5432)
        made = PostgresBackend()
    try:
        yield made
    finally:
        await made.aclose()
        if isinstance(made, PostgresBackend):
            made.drop()


@pytest.fixture
async def store(backend: Backend) -> Any:
    return await backend.open()
