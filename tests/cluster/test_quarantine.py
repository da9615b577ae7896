"""Only the node that holds a conversation's lease may quarantine its record.

Two supervisors in one process, both with ``on_corrupt="quarantine"``: one
serves a conversation whose stored record the other cannot read (as an old
node would during a rolling deploy that changed the State's schema). Commands
through the node without the lease get ``CorruptStateError``; the record stays
where it is, and the serving node carries on.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from sessionvisor import CorruptStateError, SessionSupervisor, SingleRouter
from sessionvisor.testing import ScriptedAgent, wait_until
from tests._support.servers import RedisServer
from tests._support.sql import sql

from ._inprocess import in_process_nodes

pytestmark = pytest.mark.anyio


def _nodes(dsn: str, redis: RedisServer, *names: str) -> Any:
    return in_process_nodes(
        dsn,
        redis,
        *names,
        router=lambda name: SingleRouter(lambda agent_id, config: ScriptedAgent()),
        on_corrupt="quarantine",
    )


def _stored(dsn: str, cid: str) -> int:
    return len(sql(dsn, "SELECT 1 FROM sessionvisor_conversations WHERE id = %s", cid))


def _quarantined(dsn: str, cid: str) -> int:
    if not sql(dsn, "SELECT to_regclass('sessionvisor_conversations_quarantine')")[0][0]:
        return 0
    return len(
        sql(
            dsn,
            "SELECT 1 FROM sessionvisor_conversations_quarantine WHERE conversation_id = %s",
            cid,
        )
    )


def _holder(dsn: str, cid: str) -> tuple[str, bool] | None:
    rows = sql(
        dsn,
        "SELECT node_id, lease_until > now() FROM sessionvisor_leases WHERE conversation_id = %s",
        cid,
    )
    return rows[0] if rows else None


async def _replies(node: SessionSupervisor, cid: str, count: int) -> list[str]:
    async def done() -> bool:
        state = await node.load(cid, scope="u")
        return state is not None and sum(m.role == "assistant" for m in state.messages) >= count

    await wait_until(done, timeout=15, interval=0.02, message=f"{count} replies in {cid}")
    state = await node.load(cid, scope="u")
    assert state is not None
    return [str(m.content) for m in state.messages if m.role == "assistant"]


async def test_a_node_without_the_lease_never_moves_an_unreadable_record_aside(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    async with _nodes(pg_dsn, redis_server, "a", "b") as (a, b):
        cid = "c-" + uuid.uuid4().hex[:10]
        await a.send(cid, "one", scope="u")
        await _replies(a, cid, 1)
        head = sql(pg_dsn, "SELECT head FROM sessionvisor_conversations WHERE id = %s", cid)
        # b cannot read what a stores (a schema b does not know).
        sql(pg_dsn, "UPDATE sessionvisor_conversations SET head = 'not json' WHERE id = %s", cid)

        with pytest.raises(CorruptStateError):
            await b.send(cid, "two", scope="u")
        with pytest.raises(CorruptStateError):
            await b.resume(cid, "yes", scope="u")
        with pytest.raises(CorruptStateError):
            await b.dismiss(cid, scope="u")
        with pytest.raises(CorruptStateError):
            await b.stop(cid, scope="u")

        # Nothing moved: the record is where a keeps it, a still serves it.
        assert _stored(pg_dsn, cid) == 1 and _quarantined(pg_dsn, cid) == 0
        assert _holder(pg_dsn, cid) == ("a", True)
        assert a.get(cid, scope="u") is not None
        assert b.metrics().cluster.commands_posted == 0

        # Once a can read it again (say, the deploy finished), a goes on as before.
        sql(
            pg_dsn, "UPDATE sessionvisor_conversations SET head = %s WHERE id = %s", head[0][0], cid
        )
        await a.send(cid, "three", scope="u")
        assert await _replies(a, cid, 2) == ["echo: one", "echo: three"]


async def test_the_node_that_takes_the_lease_quarantines_what_it_cannot_read(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    async with _nodes(pg_dsn, redis_server, "a", "b") as (a, b):
        cid = "c-" + uuid.uuid4().hex[:10]
        await a.send(cid, "one", scope="u")
        await _replies(a, cid, 1)
        assert await a.stop(cid, scope="u") == "stopped"
        await wait_until(lambda: _holder(pg_dsn, cid) == ("a", False), timeout=10, interval=0.02)
        sql(pg_dsn, "UPDATE sessionvisor_conversations SET head = 'not json' WHERE id = %s", cid)

        # Nobody serves it: b takes the lease, then moves the record aside and
        # starts afresh, as one process with on_corrupt="quarantine" does.
        delivery = await b.send(cid, "two", scope="u")
        assert delivery.started
        assert _quarantined(pg_dsn, cid) == 1
        assert _holder(pg_dsn, cid) == ("b", True)
        assert await _replies(b, cid, 1) == ["echo: two"]
