"""``stop`` unloads, ``cancel`` aborts, on three real nodes.

A turn running on its owner when the owner is told to ``stop`` is saved as
unanswered work and the lease is given up: some node's sweeper claims the
conversation and answers the message, with no new request, within a sweep or
two. A turn ``cancel``-led and then stopped is rolled back and left alone: the
store does not flag it as unanswered, no node takes it, and its message gets
no reply until the user writes again.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sessionvisor.testing import wait_until
from tests._support.servers import RedisServer

from ._nodes import (
    LEASE_TTL,
    POLL,
    RENEW_EVERY,
    Client,
    Nodes,
    cluster_nodes,
    explained,
    judge,
    read_leases,
    read_store,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

#: Seconds between the demo's streamed words: 120 words make a turn of about 2.4 s.
WORD_DELAY = 0.02
#: The claim of a released lease needs one sweep (every ``renew_every``); the rest
#: is slack for a loaded 2-core machine. The measured time is printed.
ANSWER_BOUND = LEASE_TTL + RENEW_EVERY + 15.0


def long_text(cid: str, words: int = 120) -> str:
    return f"{cid} says " + " ".join(f"word{i}" for i in range(words))


async def running_on_its_owner(nodes: Nodes, client: Client, pg_dsn: str, cid: str) -> str:
    """Wait until ``cid``'s turn runs; return its owner's node id."""
    owner: list[str] = []

    async def running() -> bool:
        lease = read_leases(pg_dsn, cid).get(cid)
        if lease is None or not lease.live:
            return False
        _, answer = await client.request("GET", f"/conversations/{cid}", only=nodes[lease.node_id])
        owner[:] = [lease.node_id]
        return bool(answer.json()["status"] == "running")

    await wait_until(
        running,
        timeout=10,
        interval=POLL,
        message=explained(f"{cid} runs its turn on its owner", nodes.report),
    )
    return owner[0]


async def test_a_turn_running_at_a_stop_is_answered_by_some_node_unasked_a_cancelled_one_is_not(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    stopped, cancelled = "unload-stop", "unload-cancel"
    async with (
        cluster_nodes(pg_dsn, redis_server.url, tmp_path, word_delay=WORD_DELAY) as nodes,
        Client(nodes) as client,
    ):
        for cid in (stopped, cancelled):
            await client.send(cid, long_text(cid), f"{cid}-m0")
        owners = {
            cid: await running_on_its_owner(nodes, client, pg_dsn, cid)
            for cid in (stopped, cancelled)
        }

        _, answer = await client.request(
            "POST", f"/conversations/{cancelled}/cancel", only=nodes[owners[cancelled]]
        )
        assert answer.json()["status"] == "cancelled"
        for cid in (cancelled, stopped):
            _, answer = await client.request(
                "DELETE", f"/conversations/{cid}", only=nodes[owners[cid]]
            )
            assert answer.json() == {"result": "stopped"}
        stopped_at = time.monotonic()

        # Right after the stop: the stopped turn's message is stored as unanswered work.
        store = read_store(pg_dsn, "unload-")
        assert store[stopped].unanswered
        assert judge(store[stopped], client.sent[stopped]).waiting
        # The cancelled one is rolled back: its message stays, with no reply, not flagged.
        assert not store[cancelled].unanswered
        assert judge(store[cancelled], client.sent[cancelled]).waiting == [
            f"unanswered: ['{cancelled}-m0']"
        ]

        def answered() -> bool:
            verdict = judge(read_store(pg_dsn, stopped).get(stopped), client.sent[stopped])
            assert verdict.wrong == [], verdict.wrong
            return not verdict.waiting

        def taken() -> bool:
            lease = read_leases(pg_dsn, stopped).get(stopped)
            return lease is not None and lease.live and lease.epoch > store[stopped].epoch

        # No request from here on: some node's sweeper claims it and answers it.
        await wait_until(
            taken,
            timeout=ANSWER_BOUND,
            interval=POLL,
            message=explained(f"a node claims {stopped} without a request", nodes.report),
        )
        claimed = time.monotonic() - stopped_at
        await wait_until(
            answered,
            timeout=ANSWER_BOUND,
            interval=POLL,
            message=explained(f"{stopped}'s message answered without a request", nodes.report),
        )
        took = time.monotonic() - stopped_at

        # By then the sweepers have passed over the cancelled conversation: nobody took it.
        leases = read_leases(pg_dsn, "unload-")
        assert not leases[cancelled].live
        after = read_store(pg_dsn, cancelled)[cancelled]
        assert after.messages == store[cancelled].messages
        assert judge(after, client.sent[cancelled]).waiting == [f"unanswered: ['{cancelled}-m0']"]
        assert client.failed == []
    print(
        f"stopped on {owners[stopped]} mid-turn: claimed by {leases[stopped].node_id} "
        f"{claimed:.2f} s after the stop (sweep every {RENEW_EVERY} s) and answered after "
        f"{took:.2f} s (the turn runs again, about {WORD_DELAY * 120:.1f} s), with no request"
    )
