"""The cluster tests run against real servers: a fresh PostgreSQL database per
module (``pg_dsn``) and a redis-server of their own on a free port
(``redis_server``), which a test may stop and start again (both fixtures are
in tests/conftest.py). Outside CI a missing server skips with the reason; in
CI (CI=true) it fails, since scripts/test-services.sh provides both.

The cluster mode runs on asyncio only (psycopg's async API, redis.asyncio), so
``anyio_backend`` is asyncio here; a test on trio checks the clear refusal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests._support.servers import RedisServer

if TYPE_CHECKING:
    from ._nodes import Nodes


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def nodes(pg_dsn: str, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Nodes]:
    """Three demo node processes of one cluster (see ``_nodes.cluster_nodes``)."""
    from ._nodes import cluster_nodes

    async with cluster_nodes(pg_dsn, redis_server.url, tmp_path) as started:
        yield started
