"""Three real nodes, one of them killed (kill -9) or frozen (SIGSTOP) while it owns work.

The others take its conversations over without any new request, within
``lease_ttl + renew_every + 1 s`` of the kill (2 + 0.5 + 1 = 3.5 s here); a
frozen owner that comes back finds its writes refused and stops those
sessions as superseded. The database is checked at the end: nothing
acknowledged lost, nothing answered twice, the store's epoch the new owner's.
"""

from __future__ import annotations

import time
from collections import Counter

import anyio
import pytest

from sessionvisor.testing import wait_until

from ._nodes import (
    LEASE_TTL,
    POLL,
    RENEW_EVERY,
    Client,
    Node,
    Nodes,
    check_one_owner,
    explained,
    judge,
    read_leases,
    read_store,
    wait_all_answered,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

# The bound the cluster promises for a takeover after a node dies, and the slack
# this test allows on top: the test polls the database every 0.05 s, and on the
# 2-core test machine the two surviving nodes, PostgreSQL, Redis and this
# client's load all share the CPU, so a sweeper pass can start late. 1.5 s is
# about 40 % of the bound; a takeover that waits for a second lease period
# (2 s more) still fails.
TAKEOVER_BOUND = LEASE_TTL + RENEW_EVERY + 1.0
TAKEOVER_SLACK = 1.5


def long_text(cid: str, words: int) -> str:
    """A message the demo quotes in full: its reply streams ``words`` words more."""
    return f"{cid} says " + " ".join(f"word{i}" for i in range(words))


def busiest_owner(nodes: Nodes, pg_dsn: str, prefix: str) -> Node:
    owners = Counter(lease.node_id for lease in read_leases(pg_dsn, prefix).values() if lease.live)
    assert owners, "no conversation has a live lease"
    return nodes[owners.most_common(1)[0][0]]


async def test_kill_9_of_a_node_under_load_its_conversations_go_on_elsewhere_unasked(
    nodes: Nodes, pg_dsn: str
) -> None:
    prefix = "kill-"
    quiet = [f"{prefix}q{i}" for i in range(45)]  # no request at all after the kill
    busy = [f"{prefix}b{i}" for i in range(30)]  # the load that goes on through it
    async with Client(nodes) as client:
        stop = anyio.Event()
        async with anyio.create_task_group() as load:
            for cid in busy:
                load.start_soon(lambda c=cid: client.keep_sending(c, stop, pace=0.2))
            # Each quiet conversation: a long message (its reply streams for 2 s or
            # more) and one more behind it, so the owner has turns in flight and
            # queued work when it dies.
            async with anyio.create_task_group() as tg:
                for cid in quiet:
                    tg.start_soon(client.converse, cid, [long_text(cid, 400), f"{cid} again"])
            victim = busiest_owner(nodes, pg_dsn, prefix + "q")
            victim.kill()
            killed_at = time.monotonic()

            leases = read_leases(pg_dsn, prefix + "q")
            stored = read_store(pg_dsn, prefix + "q")
            orphans = [
                cid
                for cid in quiet
                if leases[cid].node_id == victim.node_id
                and judge(stored.get(cid), client.sent[cid]).waiting
            ]
            assert orphans, f"{victim.node_id} had no unanswered work when it was killed"

            def taken_over() -> bool:
                now = read_leases(pg_dsn, prefix + "q")
                return all(now[cid].node_id != victim.node_id and now[cid].live for cid in orphans)

            # The bound is measured below and reported if later.
            await wait_until(
                taken_over,
                timeout=TAKEOVER_BOUND + TAKEOVER_SLACK + 10,
                interval=POLL,
                message=explained(
                    f"the others hold the leases of {len(orphans)} conversations of the dead node",
                    nodes.report,
                ),
            )
            takeover = time.monotonic() - killed_at
            orphan_sent = {cid: client.sent[cid] for cid in orphans}
            await wait_all_answered(pg_dsn, prefix + "q", orphan_sent, 30, nodes, others=False)
            answered = time.monotonic() - killed_at
            stop.set()
        await wait_all_answered(pg_dsn, prefix, client.sent, 60, nodes)
    print(
        f"kill -9 {victim.node_id}: {len(orphans)} of its conversations had unanswered work; "
        f"the others held their leases {takeover:.2f} s after the kill (bound "
        f"{TAKEOVER_BOUND} s + {TAKEOVER_SLACK} s slack) and had answered them after "
        f"{answered:.2f} s; {client.retries} retries of the load"
    )
    assert takeover <= TAKEOVER_BOUND + TAKEOVER_SLACK
    assert client.failed == []
    leases = check_one_owner(pg_dsn, prefix, quiet + busy)
    assert all(leases[cid].epoch >= 2 for cid in orphans)  # taken, not handed back


async def test_sigstop_of_an_owner_past_its_lease_then_sigcont_its_writes_are_refused(
    nodes: Nodes, pg_dsn: str
) -> None:
    prefix = "stop-"
    cids = [f"{prefix}{i}" for i in range(15)]
    async with Client(nodes) as client:
        async with anyio.create_task_group() as tg:
            for cid in cids:
                tg.start_soon(client.converse, cid, [f"{cid} hello"])
        await wait_all_answered(pg_dsn, prefix, client.sent, 30, nodes)
        victim = busiest_owner(nodes, pg_dsn, prefix)
        before = read_leases(pg_dsn, prefix)
        mine = [cid for cid in cids if before[cid].node_id == victim.node_id]

        # Give the owner a long turn (its reply streams for 2 s or more), and
        # freeze it once the turn has begun: the user message is in the history
        # (saved when the turn starts), the reply not yet.
        async with anyio.create_task_group() as tg:
            for cid in mine:
                tg.start_soon(lambda c=cid: client.send(c, long_text(c, 400), f"{c}-long"))

        def turns_begun() -> bool:
            stored = read_store(pg_dsn, prefix)
            return all(stored[cid].messages[-1].get("id") == f"{cid}-long" for cid in mine)

        await wait_until(
            turns_begun,
            timeout=20,
            interval=POLL,
            message=explained("the long turns began", nodes.report),
        )
        victim.pause()
        frozen_at = time.monotonic()

        def taken_over() -> bool:
            now = read_leases(pg_dsn, prefix)
            return all(now[cid].node_id != victim.node_id and now[cid].live for cid in mine)

        await wait_until(
            taken_over,
            timeout=20,
            interval=POLL,
            message=explained("the others took the frozen owner's leases", nodes.report),
        )
        takeover = time.monotonic() - frozen_at
        # The new owners run the turns again and answer them, once.
        await wait_all_answered(pg_dsn, prefix, client.sent, 30, nodes)
        after_takeover = read_store(pg_dsn, prefix)

        victim.resume()

        # Woken up, it finds its leases gone or its writes refused: each of those
        # sessions stops as superseded, and says so in its log.
        def all_superseded() -> bool:
            lines = [line for line in victim.log_text().splitlines() if "superseded" in line]
            return all(
                any(f"conversation_id={cid} " in f"{line} " for line in lines) for cid in mine
            )

        await wait_until(
            all_superseded,
            timeout=20,
            interval=POLL,
            message=explained(f"{victim.node_id} logs its sessions as superseded", victim.tail),
        )
        # Nothing the stale owner did got in: the store is as the new owners left it.
        assert read_store(pg_dsn, prefix) == after_takeover
        leases = check_one_owner(pg_dsn, prefix, cids)
        for cid in mine:
            assert leases[cid].node_id != victim.node_id
            assert leases[cid].epoch > before[cid].epoch

        # Back in service, the old owner takes messages for them again (the owner answers).
        for cid in mine:
            await client.send(cid, f"{cid} after the pause", f"{cid}-after", only=victim)
        await wait_all_answered(pg_dsn, prefix, client.sent, 30, nodes)
    print(
        f"SIGSTOP {victim.node_id} with {len(mine)} turns running: taken over "
        f"{takeover:.2f} s after the freeze; superseded after SIGCONT, nothing stale stored"
    )
    assert client.failed == []
