"""Quotas per owner in a cluster, through Redis (docs/quotas.md, "In a cluster"):
the message bucket is one per owner for every node, and while Redis is down each
node enforces its share of both limits, says so once, and counts cluster-wide
again when Redis is back.

The nodes are in-process supervisors (``_inprocess``) on the module's own
redis-server, which the outage test stops and starts again (never the machine's
shared Redis).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
import structlog

from sessionvisor import Done, RateLimited, SessionSupervisor, SingleRouter, Turn
from sessionvisor.cluster._quotas import ClusterQuotas
from sessionvisor.http import create_app, header_scope
from sessionvisor.testing import wait_until
from tests._support.servers import RedisServer

from ._inprocess import in_process_nodes

pytestmark = pytest.mark.anyio

TTL = 2.0  # the nodes' lease TTL: a quota refresh every 0.5 s


class HeldAgent:
    """One node's agent: a turn of a conversation named ``held-*`` runs until
    ``open(cid)``; any other turn answers at once. ``running`` and ``started`` say
    what ran on this node."""

    def __init__(self, gates: dict[str, anyio.Event]) -> None:
        self.gates = gates
        self.running: set[str] = set()
        self.started: list[str] = []

    async def run(self, turn: Turn) -> Done:
        cid = turn.conversation_id
        self.started.append(cid)
        self.running.add(cid)
        try:
            if cid.startswith("held-"):
                await self.gates.setdefault(cid, anyio.Event()).wait()
        finally:
            self.running.discard(cid)
        return Done(turn.state, reply="ok")


class Agents:
    """The agents of the nodes, by node name, and the gates they share."""

    def __init__(self) -> None:
        self.gates: dict[str, anyio.Event] = {}
        self.by_node: dict[str, HeldAgent] = {}

    def router(self, name: str) -> SingleRouter:
        agent = self.by_node[name] = HeldAgent(self.gates)
        return SingleRouter(lambda agent_id, config: agent)

    def open(self, cid: str) -> None:
        self.gates.setdefault(cid, anyio.Event()).set()

    def open_all(self) -> None:
        for gate in self.gates.values():
            gate.set()


def _nodes(dsn: str, redis: RedisServer, agents: Agents, *names: str, **opts: int) -> Any:
    return in_process_nodes(
        dsn,
        redis,
        *names,
        router=agents.router,
        ttl=TTL,
        supervisor_opts={"inactivity_timeout": None, **opts},
    )


def _quotas(node: SessionSupervisor) -> ClusterQuotas:
    quotas = node._host.quotas
    assert isinstance(quotas, ClusterQuotas)
    return quotas


def _owner(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


async def _accepted(node: SessionSupervisor, owner: str, count: int) -> None:
    for _ in range(count):
        await node.send("c-" + uuid.uuid4().hex[:10], "hi", scope=owner)


async def _refused(node: SessionSupervisor, owner: str) -> RateLimited:
    with pytest.raises(RateLimited) as refused:
        await node.send("c-" + uuid.uuid4().hex[:10], "one too many", scope=owner)
    return refused.value


def _count_redis_calls(quotas: ClusterQuotas) -> list[int]:
    """Count every time ``quotas`` asks for its Redis client (once per call to Redis)."""
    calls = [0]
    client: Callable[[], Any] = quotas._redis

    def counted() -> Any:
        calls[0] += 1
        return client()

    quotas._redis = counted  # type: ignore[method-assign]
    return calls


def _record_asks(quotas: ClusterQuotas) -> list[tuple[str, bool]]:
    """Record each answer to a waiter of ``quotas`` asking for a slot: (conversation, granted)."""
    asks: list[tuple[str, bool]] = []
    ask = quotas._ask

    async def recorded(waiter: Any) -> bool:
        granted = await ask(waiter)
        asks.append((waiter.conversation_id, granted))
        return granted

    quotas._ask = recorded  # type: ignore[method-assign]
    return asks


# -- the message bucket is one per owner across the nodes -----------------------------------


async def test_an_owners_messages_are_counted_once_across_three_nodes(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    import redis.asyncio

    agents = Agents()
    owner, other = _owner("u"), _owner("v")
    async with _nodes(
        pg_dsn, redis_server, agents, "a", "b", "c", messages_per_minute_per_owner=5
    ) as (a, b, c):
        await _accepted(a, owner, 2)
        await _accepted(b, owner, 2)
        await _accepted(c, owner, 1)  # 5 in all: none of the nodes took 5 alone

        for node in (a, b, c):
            refused = await _refused(node, owner)
            assert 0 < refused.retry_after <= 12.0  # 60 s / 5 a token
            assert "5 per minute" in str(refused) and owner not in str(refused)
        await _accepted(b, other, 5)  # another owner has a bucket of its own

        # One hash per owner in Redis, shared by the nodes.
        key = f"{_quotas(a)._prefix}:quota:{owner}:bucket"
        client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            bucket = await client.hgetall(key)
        finally:
            await client.aclose()
        assert set(bucket) == {"tokens", "at"} and float(bucket["tokens"]) < 1.0
        assert all(not _quotas(n)._down for n in (a, b, c))


async def test_over_http_a_send_past_the_cluster_wide_rate_is_a_429_on_any_node(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    agents = Agents()
    alice = {"X-User": _owner("alice")}
    async with _nodes(
        pg_dsn, redis_server, agents, "a", "b", messages_per_minute_per_owner=3
    ) as nodes:
        clients = [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(n, scope_from_request=header_scope)),
                base_url="http://testserver",
            )
            for n in nodes
        ]
        try:

            async def post(i: int) -> httpx.Response:
                cid = "c-" + uuid.uuid4().hex[:10]
                return await clients[i].post(
                    f"/conversations/{cid}/messages", json={"content": "hi"}, headers=alice
                )

            for i in (0, 1, 0):
                sent = await post(i)
                assert sent.status_code == 202, sent.text
            for i in (1, 0):
                refused = await post(i)
                assert refused.status_code == 429, refused.text
                assert 1 <= int(refused.headers["Retry-After"]) <= 20  # 60 s / 3 a token
                body = refused.json()
                assert body["error"] == "RateLimited" and "3 per minute" in body["detail"]
        finally:
            for client in clients:
                await client.aclose()


# -- Redis down: each node enforces its share -------------------------------------------------


async def test_while_redis_is_down_each_node_enforces_its_share_then_counts_cluster_wide(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    """Three nodes, 3 turns at once and 6 messages a minute per owner: while Redis
    is down each node allows 1 turn and 2 messages a minute per owner."""
    agents = Agents()
    texter, runner, later = _owner("m"), _owner("r"), _owner("m")
    with structlog.testing.capture_logs() as logs:

        def logged(event: str) -> int:
            return sum(1 for e in logs if e["event"] == event)

        try:
            async with _nodes(
                pg_dsn,
                redis_server,
                agents,
                "a",
                "b",
                "c",
                max_running_per_owner=3,
                messages_per_minute_per_owner=6,
            ) as nodes:
                a, b, c = nodes
                quotas = [_quotas(n) for n in nodes]
                await wait_until(
                    lambda: all(q._nodes == 3 for q in quotas),
                    timeout=10,
                    interval=0.05,
                    message=lambda: f"every node sees 3: {[q._nodes for q in quotas]}",
                )
                assert [q.share(6) for q in quotas] == [2, 2, 2]
                calls = [_count_redis_calls(q) for q in quotas]

                redis_server.stop()
                # -- down: the message bucket, 2 per node
                for node in nodes:
                    await _accepted(node, texter, 2)
                    refused = await _refused(node, texter)
                    assert "2 per minute" in str(refused)
                    assert 29.0 <= refused.retry_after <= 30.0  # 60 s / 2 a token
                assert all(q._down for q in quotas)

                # -- down: the running limit, 1 per node
                await a.send("held-r1", "first", scope=runner)
                await a.send("held-r2", "second", scope=runner)
                await b.send("held-r3", "third", scope=runner)
                run_a, run_b = agents.by_node["a"].running, agents.by_node["b"].running
                await wait_until(
                    lambda: run_a == {"held-r1"} and run_b == {"held-r3"},
                    timeout=10,
                    interval=0.01,
                    message=lambda: f"one turn on a and one on b: {run_a}, {run_b}",
                )
                assert quotas[0].waiting("held-r2")

                # Several refreshes fail meanwhile: none logs again, none starts r2,
                # and no node calls Redis more often than it refreshes.
                before = [n[0] for n in calls]
                start = anyio.current_time()
                await wait_until(
                    lambda: all(n[0] - was >= 3 for n, was in zip(calls, before, strict=True)),
                    timeout=10,
                    interval=0.05,
                    message=lambda: f"3 refreshes each: {[n[0] for n in calls]} from {before}",
                )
                for node, n in zip(nodes, calls, strict=True):
                    burst = n[0]
                    for _ in range(20):  # sends while down do not call Redis
                        await _refused(node, texter)
                    assert n[0] - burst <= 1  # a refresh at most
                elapsed = anyio.current_time() - start
                refreshes = elapsed / quotas[0]._every + 2
                for n, was in zip(calls, before, strict=True):
                    assert n[0] - was <= refreshes, (n[0] - was, elapsed)
                assert logged("quota_redis_unavailable") == 3  # once for each node
                assert logged("quota_redis_recovered") == 0
                assert agents.by_node["a"].started.count("held-r2") == 0
                assert quotas[0].waiting("held-r2")

                agents.open("held-r1")  # its slot is free: r2 takes it, on a
                await wait_until(
                    lambda: run_a == {"held-r2"},
                    timeout=10,
                    interval=0.01,
                    message=lambda: f"r2 runs on a: {run_a}",
                )

                # -- Redis is back: cluster-wide counts again
                redis_server.start()
                await wait_until(
                    lambda: logged("quota_redis_recovered") == 3,
                    timeout=10,
                    interval=0.05,
                    message=lambda: f"3 recoveries: {[q._down for q in quotas]}",
                )
                assert not any(q._down for q in quotas)
                assert logged("quota_redis_unavailable") == 3

                # Messages: 6 for an owner in all, 4 of them on one node.
                await _accepted(a, later, 4)
                await _accepted(b, later, 2)
                refused = await _refused(c, later)
                assert "6 per minute" in str(refused)

                # Turns: r2 (a) and r3 (b) were registered at the recovery, so one
                # more may run anywhere, even on a: then the owner's 3 are taken.
                await a.send("held-r4", "fourth", scope=runner)
                await wait_until(
                    lambda: run_a == {"held-r2", "held-r4"},
                    timeout=10,
                    interval=0.01,
                    message=lambda: f"r4 runs beside r2 on a: {run_a}",
                )
                asks = _record_asks(quotas[2])
                await c.send("held-r5", "fifth", scope=runner)
                await wait_until(
                    lambda: asks.count(("held-r5", False)) >= 2,
                    timeout=10,
                    interval=0.01,
                    message=lambda: f"r5 asked twice and waits: {asks}",
                )
                assert quotas[2].waiting("held-r5") and "held-r5" not in agents.by_node["c"].started
                agents.open("held-r3")  # freed on b: c's waiter finds it by its poll
                run_c = agents.by_node["c"].running
                await wait_until(
                    lambda: run_c == {"held-r5"},
                    timeout=10,
                    interval=0.01,
                    message=lambda: f"r5 runs on c once r3 ended: {run_c}",
                )
                assert not run_b
                agents.open_all()

                # A second outage is logged once again, and so is its end.
                redis_server.stop()
                await wait_until(
                    lambda: logged("quota_redis_unavailable") == 6,
                    timeout=10,
                    interval=0.05,
                    message=lambda: f"3 more outages seen: {[q._down for q in quotas]}",
                )
                redis_server.start()
                await wait_until(
                    lambda: logged("quota_redis_recovered") == 6,
                    timeout=10,
                    interval=0.05,
                    message=lambda: f"3 more recoveries: {[q._down for q in quotas]}",
                )
                levels = {(e["event"], e["log_level"]) for e in logs if "quota_redis" in e["event"]}
                assert levels == {
                    ("quota_redis_unavailable", "warning"),
                    ("quota_redis_recovered", "info"),
                }
                assert logged("quota_redis_unavailable") == 6
        finally:
            agents.open_all()
            if redis_server.process is None:
                redis_server.start()  # the module's other tests need it
