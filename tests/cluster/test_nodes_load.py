"""Three real nodes under load: 300 conversations over random nodes, and a rolling restart.

Each test starts three ``python -m sessionvisor demo --cluster`` processes on
the module's database and Redis (see ``_nodes.py``) and checks what the
database holds at the end: every acknowledged message stored once, in the
order acknowledged, answered by exactly one reply; one lease row per
conversation, with the store's epoch equal to the lease's.
"""

from __future__ import annotations

import time
from collections import Counter

import anyio
import httpx
import pytest

from sessionvisor.testing import wait_until
from tests._support.sql import sql

from ._nodes import (
    HEADERS,
    POLL,
    Client,
    Nodes,
    check_one_owner,
    read_leases,
    wait_all_answered,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


async def test_300_conversations_over_random_nodes_each_message_answered_once(
    nodes: Nodes, pg_dsn: str
) -> None:
    prefix = "load-"
    cids = [f"{prefix}{i}" for i in range(300)]
    overlaps: list[str] = []
    samples = 0

    async def watch_owners(stop: anyio.Event) -> None:
        # While the load runs: no conversation has a live session on two nodes.
        nonlocal samples
        async with httpx.AsyncClient(headers=HEADERS, timeout=5) as http:
            while not stop.is_set():
                where: dict[str, list[str]] = {}
                for node in nodes.live():
                    answer = await http.get(f"{node.url}/sessions")
                    assert answer.status_code == 200, answer.text
                    for row in answer.json()["sessions"]:
                        where.setdefault(row["conversation_id"], []).append(node.node_id)
                overlaps.extend(f"{cid} on {on}" for cid, on in where.items() if len(on) > 1)
                samples += 1
                with anyio.move_on_after(0.3):
                    await stop.wait()

    start = time.monotonic()
    async with Client(nodes) as client:
        stop = anyio.Event()
        async with anyio.create_task_group() as watchers:
            watchers.start_soon(watch_owners, stop)
            async with anyio.create_task_group() as tg:
                for cid in cids:
                    texts = [f"{cid} first", f"{cid} second", f"{cid} third"]
                    tg.start_soon(client.converse, cid, texts)
            sent_in = time.monotonic() - start
            answered = await wait_all_answered(pg_dsn, prefix, client.sent, 60, nodes)
            stop.set()
    print(
        f"300 conversations: 900 messages acknowledged in {sent_in:.1f} s, all answered "
        f"{answered:.1f} s later; {client.retries} retries; {samples} ownership samples"
    )
    assert client.failed == []
    assert sum(len(s) for s in client.sent.values()) == 900
    assert overlaps == [], overlaps[:10]

    leases = check_one_owner(pg_dsn, prefix, cids)
    assert set(leases) == set(cids)
    owners = Counter(lease.node_id for lease in leases.values())
    print(f"owners {dict(owners)}, epochs {dict(Counter(x.epoch for x in leases.values()))}")
    assert set(owners) <= {"n1", "n2", "n3"}
    assert all(lease.live for lease in leases.values())  # the owners keep renewing
    # Random nodes: most messages reached a node that was not the owner (the inbox).
    elsewhere = sum(
        1 for cid, sent in client.sent.items() for s in sent if s.node_id != leases[cid].node_id
    )
    assert elsewhere > 100, f"only {elsewhere} messages went through another node"


async def test_rolling_restart_under_load_loses_nothing_and_fails_no_request(
    nodes: Nodes, pg_dsn: str
) -> None:
    prefix = "roll-"
    cids = [f"{prefix}{i}" for i in range(60)]
    drains: dict[str, float] = {}
    async with Client(nodes) as client:
        stop = anyio.Event()
        async with anyio.create_task_group() as load:
            for cid in cids:
                load.start_soon(lambda c=cid: client.keep_sending(c, stop, pace=0.3))
            # Load first, so each node owns conversations with turns running.
            await wait_until(
                lambda: len(client.sent) == len(cids),
                timeout=30,
                interval=POLL,
                message="every conversation began",
            )
            for node in nodes:
                incarnation = node.incarnation()
                began = time.monotonic()
                node.terminate()
                code = await node.wait_exit(30)
                drains[node.node_id] = time.monotonic() - began
                assert code == 0, node.tail()
                # Drained: the run that ended holds no live lease any more.
                held = sql(
                    pg_dsn,
                    "SELECT conversation_id, epoch, lease_until - now() FROM sessionvisor_leases "
                    "WHERE node_id = %s AND incarnation = %s AND lease_until >= now()",
                    node.node_id,
                    incarnation,
                )
                assert held == [], (
                    f"{node.node_id} left live leases after its drain: {held[:5]}\n{node.tail()}"
                )
                node.start()
                await node.wait_ready()
            stop.set()
        answered = await wait_all_answered(pg_dsn, prefix, client.sent, 60, nodes)
    total = sum(len(s) for s in client.sent.values())
    print(
        f"rolling restart: drains {drains}; {total} messages acknowledged, all answered "
        f"{answered:.1f} s after the load stopped; {client.retries} retries"
    )
    assert client.failed == []
    check_one_owner(pg_dsn, prefix, cids)
    assert set(read_leases(pg_dsn, prefix)) == set(cids)
