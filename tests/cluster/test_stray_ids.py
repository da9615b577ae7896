"""A conversation id that is tried and refused leaves nothing behind in the
cluster's database: no lease row, no placeholder record (two supervisors in one
process). Clients that probe ids, mistype them or are refused by the router
must not grow the lease table and the store for ever."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from sessionvisor import AccessDenied, InvalidStatus, Route, SessionSupervisor
from sessionvisor.cluster import Inbox
from sessionvisor.testing import ScriptedAgent, wait_until
from tests._support.servers import RedisServer
from tests._support.sql import sql

from ._inprocess import in_process_nodes

pytestmark = pytest.mark.anyio

_allowed: set[str] = set()  # ids the router lets through although they look refused


def _router(scope: Any, conversation_id: str, request_opts: Mapping[str, Any]) -> Route:
    if conversation_id.startswith("no-") and conversation_id not in _allowed:
        raise PermissionError(f"no route for {conversation_id}")
    return Route(factory=_factory)


def _factory(agent_id: str, config: Any) -> ScriptedAgent:
    if "broken-" in agent_id:
        raise RuntimeError("the factory cannot build this one")
    return ScriptedAgent()


def _nodes(dsn: str, redis: RedisServer, *names: str) -> Any:
    return in_process_nodes(dsn, redis, *names, router=lambda name: _router)


def _rows(dsn: str, ids: list[str]) -> tuple[int, int]:
    leases = sql(
        dsn, "SELECT count(*) FROM sessionvisor_leases WHERE conversation_id = ANY(%s)", ids
    )[0][0]
    stored = sql(dsn, "SELECT count(*) FROM sessionvisor_conversations WHERE id = ANY(%s)", ids)[0][
        0
    ]
    return leases, stored


async def _settled(a: SessionSupervisor, b: SessionSupervisor) -> None:
    # The lease statements run just after the refusal, in the nodes' background.
    def quiet() -> bool:
        return all(not n._runtime.leases._releasing for n in (a, b))

    await wait_until(quiet, timeout=10, interval=0.02, message="releases done")


async def test_refused_attempts_leave_no_lease_and_no_record(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    async with _nodes(pg_dsn, redis_server, "a", "b") as (a, b):
        tried: list[str] = []
        for i in range(8):
            node = (a, b)[i % 2]
            cid = f"no-{uuid.uuid4().hex[:10]}"
            tried.append(cid)
            with pytest.raises(PermissionError, match="no route"):
                await node.send(cid, "hello", scope="u")
            with pytest.raises(PermissionError, match="no route"):
                await node.start(cid, scope="u")
            # A factory that fails is a refused start too.
            broken = f"broken-{uuid.uuid4().hex[:10]}"
            tried.append(broken)
            with pytest.raises(RuntimeError, match="cannot build"):
                await node.send(broken, "hello", scope="u")
            # Commands that need a stored conversation are refused before anything.
            with pytest.raises(InvalidStatus):
                await node.resume(cid, "yes", scope="u")
            with pytest.raises(InvalidStatus):
                await node.dismiss(cid, scope="u")
        await _settled(a, b)
        assert _rows(pg_dsn, tried) == (0, 0)
        assert a.metrics().cluster.leases_held == b.metrics().cluster.leases_held == 0

        # An id refused before is served like any new one once the router lets it through.
        again = tried[0]
        _allowed.add(again)
        try:
            assert (await b.send(again, "now", scope="u")).started
            await wait_until(lambda: _rows(pg_dsn, [again]) == (1, 1), timeout=10, interval=0.02)
            epoch = sql(
                pg_dsn,
                "SELECT l.epoch, s.epoch FROM sessionvisor_leases l "
                "JOIN sessionvisor_conversations s ON s.id = l.conversation_id "
                "WHERE l.conversation_id = %s",
                again,
            )
            assert epoch == [(1, 1)]
        finally:
            _allowed.discard(again)


async def test_a_conversation_with_a_record_keeps_it_when_a_start_is_refused(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    async with _nodes(pg_dsn, redis_server, "a", "b") as (a, b):
        cid = f"c-{uuid.uuid4().hex[:10]}"
        await a.send(cid, "mine", scope="u")

        async def answered() -> bool:
            state = await a.load(cid, scope="u")
            return state is not None and len(state.messages) == 2

        await wait_until(answered, timeout=10, interval=0.02)
        assert await a.stop(cid, scope="u") == "stopped"
        await _settled(a, b)
        # Another owner's send takes the lease, then the owner check refuses it.
        with pytest.raises(AccessDenied):
            await b.send(cid, "not yours", scope="intruder")
        await _settled(a, b)
        assert _rows(pg_dsn, [cid]) == (1, 1)
        state = await b.load(cid, scope="u")
        assert state is not None and state.messages[0].content == "mine"
        # ... and the lease was given up as usual: the owner goes on at once.
        assert (await b.send(cid, "again", scope="u")).started


async def test_a_claimed_stray_id_whose_wake_fails_keeps_its_back_off(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    """A command stored for an id nothing was ever saved for, whose start the router
    refuses: the sweeper's claim keeps its lease row and its back-off (it is not
    forgotten like a refused start), so the id is tried again after the back-off,
    not on every sweep."""
    cid = f"no-{uuid.uuid4().hex[:10]}"
    async with Inbox(pg_dsn) as inbox:
        await inbox.post(cid, "send", {"content": "hello", "owner": "u"}, command_id="m1")

    def failures() -> int:
        rows = sql(
            pg_dsn, "SELECT failures FROM sessionvisor_leases WHERE conversation_id = %s", cid
        )
        return int(rows[0][0]) if rows else 0

    async with _nodes(pg_dsn, redis_server, "a") as (a,):
        # Claimed, failed, and claimed again once its first back-off ran out.
        # Both counts: the lease row's and the node's own (read separately, they need
        # not move in the same instant).
        await wait_until(
            lambda: failures() >= 2 and a.metrics().background_failures["wake"] >= 2,
            timeout=30,
            interval=0.05,
        )
        assert _rows(pg_dsn, [cid])[0] == 1
