"""Several supervisors in one process, each a node of one cluster: one PostgreSQL
database (the module's ``pg_dsn``) and one redis-server, with Redis keys of
their own per call, so tests never see each other's events or wake-ups.

The faults that need real processes are in ``_nodes`` and ``test_nodes*.py``;
here the nodes share an event loop, which keeps the ordinary paths quick.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from sessionvisor import SessionSupervisor
from sessionvisor.cluster import Cluster
from sessionvisor.state.postgres import PostgresStore
from tests._support.servers import RedisServer


@asynccontextmanager
async def in_process_nodes(
    dsn: str,
    redis: RedisServer,
    *names: str,
    router: Callable[[str], Any],
    ttl: float = 3.0,
    **supervisor_kwargs: Any,
) -> AsyncIterator[list[SessionSupervisor]]:
    """One ``SessionSupervisor`` per name (its ``node_id``), each on a store of its
    own; ``router(name)`` gives each node its router, ``supervisor_kwargs`` go to
    every supervisor. All are closed (drained) at the end, the last first."""
    prefix = "t" + uuid.uuid4().hex[:8]
    async with AsyncExitStack() as stack:
        nodes = []
        for name in names:
            store = await stack.enter_async_context(PostgresStore(dsn))
            cluster = Cluster(redis.url, node_id=name, lease_ttl=ttl, prefix=prefix)
            supervisor = SessionSupervisor(
                router(name), store=store, cluster=cluster, **supervisor_kwargs
            )
            nodes.append(await stack.enter_async_context(supervisor))
        yield nodes
