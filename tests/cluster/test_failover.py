"""Failover faster than the lease for a crashed process, and the TTL kept for a pause.

Each run of a node holds an advisory lock on a PostgreSQL connection of its own
(``cluster/_liveness.py``). A process killed with ``kill -9`` loses its
connections at once, so the survivors take its conversations within about a
second even with a 30 s lease. A process frozen with SIGSTOP keeps its
connections, so its leases run their TTL first, and once woken it writes
nothing: the new owners' history is the only one stored.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import pytest

from sessionvisor.testing import free_port, wait_until
from tests._support.servers import RedisServer
from tests._support.sql import sql

from ._nodes import (
    LEASE_TABLE,
    POLL,
    Client,
    Node,
    Nodes,
    check_one_owner,
    explained,
    judge,
    node_argv,
    postgres_url,
    read_leases,
    read_store,
    wait_all_answered,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

LONG_TTL = 30.0  # a lease that would keep a crashed node's conversations for 30 s
PAUSE_TTL = 3.0


@contextlib.asynccontextmanager
async def cluster(
    pg_dsn: str, redis_url: str, logdir: Path, *, ttl: float, prefix: str
) -> AsyncIterator[Nodes]:
    """Three demo nodes with lease TTL ``ttl`` (node ids ``<prefix>1`` ...)."""
    made = []
    for i in range(1, 4):
        port = free_port()
        argv = node_argv(f"{prefix}{i}", port, postgres_url(pg_dsn), redis_url, word_delay=0.01)
        argv[argv.index("--lease-ttl") + 1] = str(ttl)
        made.append(Node(f"{prefix}{i}", argv, port, logdir))
    nodes = Nodes(made)
    try:
        await nodes.start()
        yield nodes
    finally:
        nodes.close()
        print(nodes.report(60))


def long_text(cid: str, words: int) -> str:
    """A message the demo quotes in full: its reply streams ``words`` words more."""
    return f"{cid} says " + " ".join(f"word{i}" for i in range(words))


async def start_long_turns(
    client: Client, nodes: Nodes, owner: Node, pg_dsn: str, cids: list[str]
) -> None:
    """Each conversation is taken by ``owner`` and begins a long turn there (its
    user message is stored, the reply is not)."""
    for cid in cids:
        await client.send(cid, f"{cid} hello", f"{cid}-m0", only=owner)
    prefix = cids[0].rsplit("-", 1)[0]
    await wait_all_answered(pg_dsn, prefix, client.sent, 30, nodes)
    async with anyio.create_task_group() as tg:
        for cid in cids:
            tg.start_soon(lambda c=cid: client.send(c, long_text(c, 300), f"{c}-long", only=owner))

    def turns_begun() -> bool:
        stored = read_store(pg_dsn, prefix)
        return all(
            stored[cid].messages[-1].get("id") == f"{cid}-long" and stored[cid].unanswered
            for cid in cids
        )

    await wait_until(
        turns_begun, timeout=20, interval=POLL, message=explained("the turns began", nodes.report)
    )
    leases = read_leases(pg_dsn, prefix)
    assert all(leases[cid].node_id == owner.node_id for cid in cids), leases


async def test_kill_9_of_the_owner_mid_turn_a_survivor_takes_over_long_before_the_lease_ends(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = "gone-"
    cids = [f"{prefix}{i}" for i in range(5)]
    async with cluster(pg_dsn, redis_server.url, tmp_path, ttl=LONG_TTL, prefix="k") as nodes:
        victim = nodes.all[0]
        async with Client(nodes) as client:
            await start_long_turns(client, nodes, victim, pg_dsn, cids)
            before = read_leases(pg_dsn, prefix)
            victim.kill()
            killed_at = time.monotonic()

            def taken_over() -> bool:
                now = read_leases(pg_dsn, prefix)
                return all(now[c].node_id != victim.node_id and now[c].live for c in cids)

            # The lease would run for 30 s more: waiting for it fails this test.
            await wait_until(
                taken_over,
                timeout=LONG_TTL / 3,
                interval=POLL,
                message=explained("the survivors hold the dead node's leases", nodes.report),
            )
            takeover = time.monotonic() - killed_at
            await wait_all_answered(pg_dsn, prefix, client.sent, LONG_TTL / 3, nodes)
            answered = time.monotonic() - killed_at
        leases = check_one_owner(pg_dsn, prefix, cids)
        stored = read_store(pg_dsn, prefix)
        for cid in cids:
            assert leases[cid].epoch > before[cid].epoch
            assert not judge(stored[cid], client.sent[cid]).wrong  # one answer per message
    print(
        f"kill -9 of {victim.node_id} with {len(cids)} turns running, lease TTL {LONG_TTL:g} s: "
        f"the survivors held the leases after {takeover:.2f} s and had answered after "
        f"{answered:.2f} s"
    )


def lease_row(dsn: str, cid: str) -> tuple[str, int, datetime]:
    rows = sql(
        dsn,
        f"SELECT node_id, epoch, lease_until FROM {LEASE_TABLE} WHERE conversation_id = %s",
        cid,
    )
    node_id, epoch, until = rows[0]
    return str(node_id), int(epoch), until


async def test_sigstop_of_the_owner_its_leases_run_their_ttl_and_its_writes_are_refused(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = "pause-"
    cids = [f"{prefix}{i}" for i in range(4)]
    async with cluster(pg_dsn, redis_server.url, tmp_path, ttl=PAUSE_TTL, prefix="p") as nodes:
        victim = nodes.all[0]
        async with Client(nodes) as client:
            await start_long_turns(client, nodes, victim, pg_dsn, cids)
            victim.pause()
            # The paused owner's last lease end (on the database's clock), as long as
            # it holds the rows; then when the new owner took each (its lease end
            # minus the TTL, read as soon as it changed: a renewal only moves it later).
            last_until: dict[str, datetime] = {}
            taken_at: dict[str, datetime] = {}

            def taken_over() -> bool:
                for cid in cids:
                    if cid in taken_at:
                        continue
                    node_id, _, until = lease_row(pg_dsn, cid)
                    if node_id == victim.node_id:
                        last_until[cid] = max(until, last_until.get(cid, until))
                    else:
                        taken_at[cid] = until - timedelta(seconds=PAUSE_TTL)
                return len(taken_at) == len(cids)

            await wait_until(
                taken_over,
                timeout=PAUSE_TTL * 10,
                interval=POLL,
                message=explained("the others took the paused owner's leases", nodes.report),
            )
            # Nobody took a lease before the paused owner's had run out.
            early = {c: (taken_at[c], last_until[c]) for c in cids if taken_at[c] < last_until[c]}
            assert not early, f"taken before the paused owner's lease ended: {early}"
            await wait_all_answered(pg_dsn, prefix, client.sent, 30, nodes)
            after_takeover = read_store(pg_dsn, prefix)

            victim.resume()

            def all_superseded() -> bool:
                lines = [line for line in victim.log_text().splitlines() if "superseded" in line]
                named = [f"conversation_id={c} " for c in cids]
                return all(any(n in f"{line} " for line in lines) for n in named)

            await wait_until(
                all_superseded,
                timeout=20,
                interval=POLL,
                message=explained(f"{victim.node_id} stops its sessions", victim.tail),
            )
            # Nothing the woken owner did got in: each history as the new owners left it,
            # every message answered once.
            assert read_store(pg_dsn, prefix) == after_takeover
            stored = read_store(pg_dsn, prefix)
            for cid in cids:
                assert not judge(stored[cid], client.sent[cid]).wrong
            leases = check_one_owner(pg_dsn, prefix, cids)
            assert all(leases[c].node_id != victim.node_id for c in cids)


async def test_a_live_node_whose_lock_connection_is_ended_stops_serving_before_a_takeover(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The lock goes while its process lives (an administrator ended the backend):
    the node stops the sessions whose leases name it at once, and the conversations
    are taken (by any node, itself included) without waiting out the 30 s lease;
    every message is answered once."""
    prefix = "ended-"
    cids = [f"{prefix}{i}" for i in range(4)]
    async with cluster(pg_dsn, redis_server.url, tmp_path, ttl=LONG_TTL, prefix="e") as nodes:
        victim = nodes.all[0]
        async with Client(nodes) as client:
            await start_long_turns(client, nodes, victim, pg_dsn, cids)
            before = read_leases(pg_dsn, prefix)
            ended = sql(
                pg_dsn,
                f"SELECT pg_terminate_backend(k.pid) FROM pg_locks k "
                f"JOIN {LEASE_TABLE}_runs r ON k.objid::bigint = r.lock_key "
                "WHERE k.locktype = 'advisory' AND k.objsubid = 2 AND r.node_id = %s",
                victim.node_id,
            )
            assert ended == [(True,)]

            def stopped_and_retaken() -> bool:
                lines = [line for line in victim.log_text().splitlines() if "superseded" in line]
                named = [f"conversation_id={c} " for c in cids]
                if not all(any(n in f"{line} " for line in lines) for n in named):
                    return False
                now = read_leases(pg_dsn, prefix)
                return all(now[c].live and now[c].epoch > before[c].epoch for c in cids)

            await wait_until(
                stopped_and_retaken,
                timeout=LONG_TTL / 3,
                interval=POLL,
                message=explained("the victim stops and the leases are taken again", nodes.report),
            )
            await wait_all_answered(pg_dsn, prefix, client.sent, LONG_TTL / 3, nodes)
        check_one_owner(pg_dsn, prefix, cids)
        stored = read_store(pg_dsn, prefix)
        for cid in cids:
            assert not judge(stored[cid], client.sent[cid]).wrong
        assert victim.running  # it lives on, with a new lock
