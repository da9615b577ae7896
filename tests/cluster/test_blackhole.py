"""A node whose PostgreSQL connection is black-holed (packets dropped, nothing
closed) stops serving its conversations at its lease deadline, while its
renewal call still waits for an answer that never comes; the other node takes
them over and the history holds each answer once.

Two real nodes: ``n1`` reaches PostgreSQL through a TCP relay the test owns
(``chaos/relay.py``), ``n2`` directly; both share the module's database and
Redis. The relay's ``blackhole()`` stops every byte both ways without closing
a connection, as a partition does; ``reset()`` cuts them all. The pieces
underneath are tested in this process: the renewal watchdog, a call on a
black-holed connection (it gives up after the table's timeout) and the
renewal's own connection, which a burst of waiting calls cannot take.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import pytest
from psycopg.conninfo import conninfo_to_dict

from chaos.relay import Relay
from sessionvisor.cluster import Lease, LeaseTable
from sessionvisor.cluster._ownership import Leases
from sessionvisor.testing import free_port, wait_until
from tests._support.servers import RedisServer
from tests._support.sql import sql

from ._nodes import (
    HEADERS,
    LEASE_TABLE,
    LEASE_TTL,
    POLL,
    Client,
    Node,
    Nodes,
    explained,
    node_argv,
    postgres_url,
    read_leases,
    read_store,
    wait_all_answered,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

# The demo streams its reply a word at a time: 300 words take 9 s or more, a
# turn that outlives the lease several times over.
WORD_DELAY = 0.03
WORDS = 300


def long_text(cid: str) -> str:
    return f"{cid} says " + " ".join(f"word{i}" for i in range(WORDS))


def relay_for(pg_dsn: str) -> Relay:
    info = conninfo_to_dict(pg_dsn)
    return Relay(int(info.get("port") or 5432), str(info.get("host") or "127.0.0.1"))


def through(relay: Relay, pg_dsn: str) -> str:
    """``pg_dsn``'s database, reached through ``relay``."""
    info = conninfo_to_dict(pg_dsn)
    user = info.get("user") or "root"
    return f"postgresql://{user}@127.0.0.1:{relay.port}/{info['dbname']}"


@asynccontextmanager
async def relayed_pair(
    pg_dsn: str, redis_url: str, logdir: Path
) -> AsyncIterator[tuple[Relay, Nodes]]:
    """``n1`` on PostgreSQL through a relay, ``n2`` direct; killed at the end."""
    with relay_for(pg_dsn) as relay:
        direct = postgres_url(pg_dsn)
        relayed = through(relay, pg_dsn)
        made = []
        for node_id, store in (("n1", relayed), ("n2", direct)):
            port = free_port()
            argv = node_argv(node_id, port, store, redis_url, word_delay=WORD_DELAY)
            made.append(Node(node_id, argv, port, logdir))
        nodes = Nodes(made)
        try:
            await nodes.start()
            yield relay, nodes
        finally:
            nodes.close()
            print(nodes.report(80))


async def running_on(node: Node, cid: str) -> bool:
    """Whether ``node`` lists ``cid`` among its sessions (its own, not the cluster's)."""
    async with httpx.AsyncClient(headers=HEADERS, timeout=5.0) as http:
        answer = await http.get(f"{node.url}/sessions")
    answer.raise_for_status()
    return any(s["conversation_id"] == cid for s in answer.json()["sessions"])


async def start_long_turn(client: Client, nodes: Nodes, pg_dsn: str, cid: str) -> None:
    """Send a long message to ``n1`` and wait until its turn runs there."""
    n1 = nodes["n1"]
    await client.send(cid, long_text(cid), f"{cid}-long", only=n1)
    assert read_leases(pg_dsn, cid)[cid].node_id == "n1"

    def begun() -> bool:
        stored = read_store(pg_dsn, cid).get(cid)
        return stored is not None and stored.unanswered and bool(stored.messages)

    await wait_until(
        begun, timeout=20, interval=POLL, message=explained("n1's turn began", nodes.report)
    )
    assert await running_on(n1, cid)


async def test_a_black_holed_owner_stops_at_its_deadline_and_the_other_node_answers_once(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    cid = "hole-1"
    async with relayed_pair(pg_dsn, redis_server.url, tmp_path) as (relay, nodes):
        n1 = nodes["n1"]
        async with Client(nodes) as client:
            await start_long_turn(client, nodes, pg_dsn, cid)
            relay.blackhole()
            cut_at = time.monotonic()

            # n1 can confirm nothing any more: at its lease's deadline it stops the
            # session, though its renewal has not returned (nor failed) by then.
            async def n1_stopped() -> bool:
                return not await running_on(n1, cid)

            await wait_until(
                n1_stopped,
                timeout=LEASE_TTL + 15,
                interval=POLL,
                message=explained("n1 stops serving the black-holed conversation", n1.tail),
            )
            stopped_after = time.monotonic() - cut_at
            assert any(
                f"conversation_id={cid} " in line and "reason=superseded" in line
                for line in n1.log_text().splitlines()
            ), n1.tail()

            # n2's sweeper takes the conversation over and answers the message.
            def taken_over() -> bool:
                lease = read_leases(pg_dsn, cid)[cid]
                return lease.node_id == "n2" and lease.live

            await wait_until(
                taken_over,
                timeout=30,
                interval=POLL,
                message=explained("n2 holds the conversation's lease", nodes.report),
            )
            await wait_all_answered(pg_dsn, cid, client.sent, 60, nodes)
            # n1 never got it back while cut off.
            assert not await running_on(n1, cid)

            # Healed: n1 serves again, and nothing it held back gets into the history.
            relay.forward()
            await client.send(cid, f"{cid} after the partition", f"{cid}-after", only=n1)
            await wait_all_answered(pg_dsn, cid, client.sent, 60, nodes)
        assert client.failed == []
    print(
        f"black hole: n1 stopped serving {stopped_after:.2f} s after the cut "
        f"(lease TTL {LEASE_TTL} s); n2 answered the turn once"
    )


async def test_a_reset_of_the_owners_connections_mid_turn_answers_once(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    cid = "reset-1"
    async with relayed_pair(pg_dsn, redis_server.url, tmp_path) as (relay, nodes):
        async with Client(nodes) as client:
            await start_long_turn(client, nodes, pg_dsn, cid)
            relay.reset()  # every connection of n1 to PostgreSQL is cut; new ones work
            await wait_all_answered(pg_dsn, cid, client.sent, 60, nodes)
            await client.send(cid, f"{cid} after the reset", f"{cid}-after")
            await wait_all_answered(pg_dsn, cid, client.sent, 60, nodes)
        assert client.failed == []


# -- the pieces, in this process ------------------------------------------------------


class _HangingTable:
    """A lease table whose renewal never answers, as on a black-holed connection."""

    def __init__(self) -> None:
        self.renewing = anyio.Event()
        self.answered = False

    async def renew(self, conversation_ids: list[str]) -> Any:
        self.renewing.set()
        await anyio.sleep_forever()
        self.answered = True


class _NoStreams:
    async def fence(self, conversation_id: str, epoch: int) -> None:
        return None


async def test_the_watchdog_drops_a_lease_at_its_deadline_while_the_renewal_hangs() -> None:
    table = _HangingTable()
    lost: list[tuple[str, str, float]] = []
    dropped = anyio.Event()

    def on_lost(cid: str, why: str) -> None:
        lost.append((cid, why, time.monotonic()))
        dropped.set()

    leases = Leases(
        cast(Any, table), None, cast(Any, _NoStreams()), renew_every=0.1, on_lost=on_lost
    )
    lease = Lease(
        conversation_id="c-1",
        epoch=3,
        node_id="n1",
        incarnation="run-1",
        deadline=time.monotonic() + 1.0,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(leases.run)
        await leases.adopt(lease)
        with anyio.fail_after(30):  # the test's guard, not the behaviour tested
            await table.renewing.wait()
            assert leases.epoch("c-1") == 3  # serving until the deadline
            await dropped.wait()
        tg.cancel_scope.cancel()
    [(cid, why, at)] = lost
    assert cid == "c-1" and "in time" in why
    assert at >= lease.deadline  # not before: the lease was ours until then
    assert not table.answered  # the renewal call never came back
    assert leases.epoch("c-1") is None and "c-1" not in leases.held


async def test_a_call_on_a_black_holed_connection_gives_up_after_the_timeout(
    pg_dsn: str,
) -> None:
    with relay_for(pg_dsn) as relay:
        table = LeaseTable(through(relay, pg_dsn), node_id="n1", incarnation="run-1", timeout=1.0)
        async with table:
            assert await table.acquire("bh-call") is not None
            assert "bh-call" in await table.renew(["bh-call"])  # its connection is open
            relay.blackhole()
            with anyio.fail_after(30):  # the guard: without timeouts these calls never return
                with pytest.raises(TimeoutError):
                    await table.renew(["bh-call"])
                with pytest.raises(TimeoutError):
                    await table.owner("bh-call")
            relay.forward()

            async def answers() -> bool:
                try:
                    owner = await table.owner("bh-call")
                except Exception:
                    return False
                return owner is not None and owner.node_id == "n1"

            await wait_until(answers, timeout=30, interval=POLL)
        # Opening through a black hole fails too, instead of waiting for ever.
        relay.blackhole()
        late = LeaseTable(through(relay, pg_dsn), node_id="n2", incarnation="run-1", timeout=1.0)
        with anyio.fail_after(30), pytest.raises(Exception) as refused:
            async with late:
                pass
        assert "Timeout" in type(refused.value).__name__
        await late.aclose()


async def test_the_renewal_has_a_connection_that_waiting_calls_cannot_take(pg_dsn: str) -> None:
    import psycopg

    table = LeaseTable(pg_dsn, node_id="n1", incarnation="run-1", max_connections=1)
    async with table:
        assert await table.acquire("res-a") is not None
        assert await table.acquire("res-b") is not None
        with psycopg.connect(pg_dsn) as blocker:
            # Another session holds res-a's row: a take of it waits on that lock,
            # on the only connection of the table's pool.
            blocker.execute(
                f"SELECT 1 FROM {LEASE_TABLE} WHERE conversation_id = 'res-a' FOR UPDATE"
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(table.acquire, "res-a")

                def waiting() -> bool:
                    rows = sql(
                        pg_dsn,
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND datname = current_database()",
                    )
                    return int(rows[0][0]) > 0

                await wait_until(waiting, timeout=10, interval=POLL)
                renewal = await table.renew(["res-b"])
                assert "res-b" in renewal
                blocker.rollback()
