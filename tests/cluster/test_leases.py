"""Leases with an epoch in PostgreSQL: one owner per conversation, takeovers,
restarts, and fencing of the old owner's writes through PostgresStore."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import anyio
import pytest

from sessionvisor._errors import StaleWriteError
from sessionvisor.cluster import Lease, LeaseTable
from sessionvisor.cluster._common import new_incarnation
from sessionvisor.state import Message, State, StoredConversation, dump_state
from sessionvisor.testing import wait_until
from tests._support.sql import sql

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
def names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"table": f"leases_{tag}", "store_table": f"convs_{tag}"}


@pytest.fixture
async def open_table(pg_dsn: str, names: dict[str, str]) -> AsyncIterator[Callable[..., Any]]:
    tables: list[LeaseTable] = []

    async def make(node_id: str, *, incarnation: str | None = None, **kw: Any) -> LeaseTable:
        table = LeaseTable(
            pg_dsn,
            node_id=node_id,
            incarnation=incarnation or new_incarnation(),
            **{**names, **kw},
        )
        tables.append(table)
        return await table.__aenter__()

    yield make
    for table in tables:
        await table.aclose()


def record(text: str) -> StoredConversation:
    return StoredConversation(
        state=dump_state(State(messages=[Message(role="user", content=text)]))
    )


async def wait_expired(dsn: str, table: str, cid: str) -> None:
    await wait_until(
        lambda: (
            sql(dsn, f"SELECT lease_until < now() FROM {table} WHERE conversation_id = %s", cid)
            == [(True,)]
        ),
        timeout=10,
        interval=0.02,
        message=f"the lease of {cid} expired on the database's clock",
    )


async def test_two_nodes_racing_for_100_conversations_get_one_owner_each(
    open_table: Callable[..., Any], pg_dsn: str, names: dict[str, str]
) -> None:
    a = await open_table("node-a")
    b = await open_table("node-b")
    cids = [f"c-{i}" for i in range(100)]
    results: dict[tuple[str, str], Lease | None] = {}

    async def take(table: LeaseTable, cid: str) -> None:
        results[table.node_id, cid] = await table.acquire(cid)

    attempts = [(t, cid) for cid in cids for t in (a, b)]
    random.shuffle(attempts)
    async with anyio.create_task_group() as tg:
        for table, cid in attempts:
            tg.start_soon(take, table, cid)

    winners = {}
    for cid in cids:
        got = [results[node, cid] for node in ("node-a", "node-b")]
        held = [lease for lease in got if lease is not None]
        assert len(held) == 1, f"{cid}: {got}"
        assert held[0].epoch == 1
        winners[cid] = held[0].node_id
    rows = sql(pg_dsn, f"SELECT conversation_id, node_id, epoch FROM {names['table']}")
    assert sorted(rows) == sorted((cid, winners[cid], 1) for cid in cids)
    # The loser learns who holds it.
    for cid in cids[:5]:
        owner = await a.owner(cid)
        assert owner is not None and owner.node_id == winners[cid] and owner.epoch == 1
        assert 0 < owner.expires_in <= 10


async def test_an_expired_lease_is_taken_over_with_the_next_epoch(
    open_table: Callable[..., Any], pg_dsn: str, names: dict[str, str]
) -> None:
    a = await open_table("node-a", ttl=0.2)
    b = await open_table("node-b")
    first = await a.acquire("c-1")
    assert first is not None and first.epoch == 1
    assert await b.acquire("c-1") is None  # live: not taken

    await wait_expired(pg_dsn, names["table"], "c-1")
    assert await a.owner("c-1") is None  # expired: no live owner
    second = await b.acquire("c-1")

    assert second is not None and second.epoch == 2 and second.node_id == "node-b"
    renewal = await a.renew(["c-1"])
    assert "c-1" not in renewal and renewal.lost == {"c-1"}
    owner = await a.owner("c-1")
    assert owner is not None and (owner.node_id, owner.epoch) == ("node-b", 2)
    assert await a.acquire("c-1") is None  # b's lease is live


async def test_a_live_lease_is_not_taken_by_another_node(
    open_table: Callable[..., Any], pg_dsn: str, names: dict[str, str]
) -> None:
    a = await open_table("node-a")
    b = await open_table("node-b")
    assert await a.acquire("c-1") is not None

    assert await b.acquire("c-1") is None
    assert sql(pg_dsn, f"SELECT node_id, epoch FROM {names['table']}") == [("node-a", 1)]


async def test_a_restarted_node_takes_its_leases_back_at_once(
    open_table: Callable[..., Any], pg_dsn: str, names: dict[str, str]
) -> None:
    old = await open_table("node-a", ttl=60)
    for cid in ("c-1", "c-2"):
        assert await old.acquire(cid) is not None
    other = await open_table("node-b", ttl=60)
    restarted = await open_table("node-a", ttl=60)  # a later incarnation
    assert restarted.incarnation > old.incarnation

    assert await other.acquire("c-1") is None  # a live lease of someone else
    back = [await restarted.acquire(cid) for cid in ("c-1", "c-2")]

    assert [lease.epoch if lease else None for lease in back] == [2, 2]
    assert (await old.renew(["c-1", "c-2"])).held == frozenset()
    # The old run, still alive, cannot take them back from the newer one.
    assert await old.acquire("c-1") is None
    rows = sql(pg_dsn, f"SELECT DISTINCT incarnation FROM {names['table']}")
    assert rows == [(restarted.incarnation,)]


async def test_acquiring_a_lease_already_held_moves_to_a_new_epoch(
    open_table: Callable[..., Any],
) -> None:
    a = await open_table("node-a")
    first = await a.acquire("c-1")
    again = await a.acquire("c-1")
    assert first is not None and again is not None
    assert (first.epoch, again.epoch) == (1, 2)


async def test_renew_extends_only_this_incarnations_leases(
    open_table: Callable[..., Any], pg_dsn: str, names: dict[str, str]
) -> None:
    a = await open_table("node-a", ttl=30)
    b = await open_table("node-b", ttl=30)
    for cid in ("c-1", "c-2"):
        await a.acquire(cid)
    await b.acquire("c-3")
    before = dict(sql(pg_dsn, f"SELECT conversation_id, lease_until FROM {names['table']}"))

    renewal = await a.renew(["c-1", "c-2", "c-3", "c-unknown"])

    assert renewal.held == {"c-1", "c-2"}
    assert renewal.lost == {"c-3", "c-unknown"}
    after = dict(sql(pg_dsn, f"SELECT conversation_id, lease_until FROM {names['table']}"))
    assert after["c-1"] > before["c-1"] and after["c-2"] > before["c-2"]
    assert after["c-3"] == before["c-3"]
    epochs = sql(pg_dsn, f"SELECT DISTINCT epoch FROM {names['table']}")
    assert epochs == [(1,)]  # renewal keeps the epoch


async def test_lease_deadlines_are_measured_from_before_the_statement(
    open_table: Callable[..., Any],
) -> None:
    ticks = iter([100.0, 500.0, 1000.0, 5000.0])
    a = await open_table("node-a", ttl=7, clock=lambda: next(ticks))

    lease = await a.acquire("c-1")
    renewal = await a.renew(["c-1"])

    assert lease is not None and lease.deadline == 107.0
    assert not lease.expired(106.9) and lease.expired(107.0)
    assert renewal.deadline == 507.0


async def test_release_lets_another_node_take_over_at_once_keeping_the_epoch(
    open_table: Callable[..., Any], pg_dsn: str, names: dict[str, str]
) -> None:
    a = await open_table("node-a", ttl=60)
    b = await open_table("node-b", ttl=60)
    await a.acquire("c-1")
    await a.acquire("c-2")

    assert await b.release(["c-1"]) == set()  # not b's to release
    assert await a.release(["c-1"]) == {"c-1"}
    taken = await b.acquire("c-1")

    assert taken is not None and taken.epoch == 2
    assert await b.acquire("c-2") is None
    rows = sql(pg_dsn, f"SELECT conversation_id, node_id, epoch FROM {names['table']} ORDER BY 1")
    assert rows == [("c-1", "node-b", 2), ("c-2", "node-a", 1)]


async def test_fencing_refuses_every_write_of_the_old_owner_after_a_takeover(
    open_table: Callable[..., Any], pg_dsn: str, names: dict[str, str]
) -> None:
    from sessionvisor.state.postgres import PostgresStore

    a = await open_table("node-a", ttl=0.3)
    b = await open_table("node-b", ttl=30)
    async with (
        PostgresStore(pg_dsn, table=names["store_table"]) as store_a,
        PostgresStore(pg_dsn, table=names["store_table"]) as store_b,
    ):
        lease_a = await a.acquire_fenced("c-1", store_a)
        assert lease_a is not None and lease_a.epoch == 1
        v1 = await store_a.save(
            "c-1", record("from a"), expected_version=None, lifecycle="completion", epoch=1
        )
        await wait_expired(pg_dsn, names["table"], "c-1")

        lease_b = await b.acquire_fenced("c-1", store_b)
        assert lease_b is not None and lease_b.epoch == 2
        # Right after the fence, before b wrote anything, a's write is refused.
        with pytest.raises(StaleWriteError, match="epoch"):
            await store_a.save(
                "c-1", record("a, stale"), expected_version=v1, lifecycle="completion", epoch=1
            )
        loaded = await store_b.load("c-1")
        assert loaded is not None and loaded.version == v1  # b sees what a wrote before
        v2 = await store_b.save(
            "c-1", record("from b"), expected_version=v1, lifecycle="completion", epoch=2
        )
        with pytest.raises(StaleWriteError):
            await store_a.save(
                "c-1", record("a, later"), expected_version=v2, lifecycle="completion", epoch=1
            )
        final = await store_b.load("c-1")

    assert final is not None and final.version == v2
    bodies = sql(pg_dsn, f"SELECT body FROM {names['store_table']}_messages")
    assert [b for (b,) in bodies if "from b" in str(b)] and not [
        b for (b,) in bodies if "a, " in str(b)
    ]
    assert sql(pg_dsn, f"SELECT epoch FROM {names['store_table']}") == [(2,)]


async def test_acquire_fenced_gives_up_when_a_newer_owner_fenced_already(
    open_table: Callable[..., Any], pg_dsn: str, names: dict[str, str]
) -> None:
    from sessionvisor.state.postgres import PostgresStore

    a = await open_table("node-a")
    async with PostgresStore(pg_dsn, table=names["store_table"]) as store:
        await store.fence("c-1", 5)  # as if epochs 1-5 were lost with the lease rows
        assert await a.acquire_fenced("c-1", store) is None


async def test_the_sweeper_claims_expired_leases_of_unanswered_conversations_once(
    open_table: Callable[..., Any], pg_dsn: str, names: dict[str, str]
) -> None:
    from sessionvisor.state.postgres import PostgresStore

    dead = await open_table("node-dead", ttl=0.2)
    live = await open_table("node-live", ttl=60)
    async with PostgresStore(pg_dsn, table=names["store_table"]) as store:
        work = [f"work-{i}" for i in range(20)]
        for cid in work:
            lease = await dead.acquire_fenced(cid, store)
            assert lease is not None
            await store.save(
                cid, record("q"), expected_version=None, lifecycle="queued", epoch=lease.epoch
            )
        await dead.acquire_fenced("answered", store)
        await store.save(
            "answered", record("x"), expected_version=None, lifecycle="completion", epoch=1
        )
        await live.acquire_fenced("busy-live", store)
        await store.save(
            "busy-live", record("x"), expected_version=None, lifecycle="queued", epoch=1
        )
        # Stored before the cluster mode: no lease row at all.
        await store.save("orphan", record("x"), expected_version=None, lifecycle="turn_start")
        for cid in [*work, "answered"]:
            await wait_expired(pg_dsn, names["table"], cid)

        s1 = await open_table("sweeper-1", ttl=60)
        s2 = await open_table("sweeper-2", ttl=60)
        claims: dict[str, list[Lease]] = {"sweeper-1": [], "sweeper-2": []}

        async def sweep(table: LeaseTable) -> None:
            while batch := await table.claim_expired(limit=3):
                claims[table.node_id].extend(batch)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sweep, s1)
            tg.start_soon(sweep, s2)

    claimed = [lease.conversation_id for batch in claims.values() for lease in batch]
    assert sorted(claimed) == sorted([*work, "orphan"])  # each once, nothing else
    epochs = {lease.conversation_id: lease.epoch for b in claims.values() for lease in b}
    assert {epochs[cid] for cid in work} == {2} and epochs["orphan"] == 1
    rows = dict(
        sql(pg_dsn, f"SELECT conversation_id, node_id FROM {names['table']} WHERE epoch = 1")
    )
    assert rows == {"answered": "node-dead", "busy-live": "node-live", "orphan": rows["orphan"]}


async def test_the_sweeper_also_claims_conversations_with_pending_commands(
    open_table: Callable[..., Any], pg_dsn: str, names: dict[str, str]
) -> None:
    from sessionvisor.cluster import Inbox
    from sessionvisor.state.postgres import PostgresStore

    inbox_table = names["table"] + "_inbox"
    dead = await open_table("node-dead", ttl=0.2, inbox_table=inbox_table)
    live = await open_table("node-live", ttl=60, inbox_table=inbox_table)
    async with (
        PostgresStore(pg_dsn, table=names["store_table"]) as store,
        Inbox(pg_dsn, table=inbox_table) as inbox,
    ):
        await store.save("stored", record("x"), expected_version=None, lifecycle="completion")
        await dead.acquire("posted")  # its owner died right after a post reached the inbox
        await inbox.post("posted", "send", {"content": "hi"})
        await live.acquire("live-post")
        await inbox.post("live-post", "send", {"content": "hi"})
        await inbox.post("never-leased", "send", {"content": "hi"})
        await inbox.post("stored", "cancel")  # stored at epoch 0, never leased
        await store.fence("stored", 4)
        await wait_expired(pg_dsn, names["table"], "posted")

        sweeper = await open_table("sweeper", ttl=60, inbox_table=inbox_table)
        claimed = await sweeper.claim_expired()

    epochs = {lease.conversation_id: lease.epoch for lease in claimed}
    assert epochs == {"posted": 2, "never-leased": 1, "stored": 5}


async def test_before_anything_is_stored_the_sweeper_claims_from_the_inbox(
    open_table: Callable[..., Any], pg_dsn: str, names: dict[str, str]
) -> None:
    from sessionvisor.cluster import Inbox

    inbox_table = names["table"] + "_inbox"
    sweeper = await open_table("sweeper", store_table="no_such_table", inbox_table=inbox_table)
    async with Inbox(pg_dsn, table=inbox_table) as inbox:
        await inbox.post("c-1", "send", "hi")

        claimed = await sweeper.claim_expired()

    assert [(lease.conversation_id, lease.epoch) for lease in claimed] == [("c-1", 1)]


async def test_claim_expired_without_a_store_table_claims_nothing(
    open_table: Callable[..., Any],
) -> None:
    a = await open_table("node-a", store_table="no_such_table")
    assert await a.claim_expired() == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"table": "bad-name"}, ValueError, "table name"),
        ({"table": "a.b.c"}, ValueError, "table name"),
        ({"store_table": 'x"; DROP'}, ValueError, "table name"),
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl": float("nan")}, ValueError, "ttl"),
        ({"ttl": "10"}, TypeError, "ttl"),
        ({"node_id": ""}, TypeError, "node_id"),
        ({"incarnation": None}, TypeError, "incarnation"),
        ({"max_connections": 0}, ValueError, "max_connections"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
    ],
)
def test_a_lease_table_refuses_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    args: dict[str, Any] = {"node_id": "n", "incarnation": "i", **kwargs}
    with pytest.raises(error, match=match):
        LeaseTable("postgresql://nowhere/db", **args)


async def test_ids_are_checked_before_any_statement(open_table: Callable[..., Any]) -> None:
    a = await open_table("node-a")
    with pytest.raises(TypeError, match="single str"):
        await a.renew("c-1")
    with pytest.raises(ValueError, match="conversation_id"):
        await a.acquire("")
    with pytest.raises(TypeError, match="conversation_id"):
        await a.acquire(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        await a.claim_expired(0)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_the_lease_table_says_it_needs_asyncio(anyio_backend: str) -> None:
    table = LeaseTable("postgresql://nowhere/db", node_id="n", incarnation="i")
    with pytest.raises(RuntimeError, match="asyncio only"):
        await table.acquire("c-1")


async def test_three_nodes_racing_for_expired_leases_take_each_once_with_the_next_epoch(
    open_table: Callable[..., Any], pg_dsn: str, names: dict[str, str]
) -> None:
    dead = await open_table("node-dead", ttl=0.2)
    racers = [await open_table(f"node-{n}", ttl=30) for n in "abc"]
    cids = [f"c-{i}" for i in range(60)]
    for cid in cids:
        await dead.acquire(cid)
    await wait_until(
        lambda: (
            sql(pg_dsn, f"SELECT bool_and(lease_until < now()) FROM {names['table']}") == [(True,)]
        ),
        timeout=10,
        interval=0.02,
        message="every lease of the dead node expired",
    )
    won: list[Lease] = []

    async def take(table: LeaseTable, cid: str) -> None:
        if (lease := await table.acquire(cid)) is not None:
            won.append(lease)

    async with anyio.create_task_group() as tg:
        for cid in cids:
            for table in random.sample(racers, len(racers)):
                tg.start_soon(take, table, cid)

    assert sorted(lease.conversation_id for lease in won) == sorted(cids)
    assert {lease.epoch for lease in won} == {2}
    rows = sql(pg_dsn, f"SELECT conversation_id, node_id, epoch FROM {names['table']}")
    assert sorted(rows) == sorted((w.conversation_id, w.node_id, 2) for w in won)


async def test_an_expired_lease_nobody_took_is_renewed_with_its_epoch(
    open_table: Callable[..., Any], pg_dsn: str, names: dict[str, str]
) -> None:
    a = await open_table("node-a", ttl=0.2)
    await a.acquire("c-1")
    await wait_expired(pg_dsn, names["table"], "c-1")

    renewal = await a.renew(["c-1"])

    assert renewal.held == {"c-1"}
    rows = sql(pg_dsn, f"SELECT epoch, lease_until > now() FROM {names['table']} WHERE epoch = 1")
    assert rows == [(1, True)]


async def test_an_unreachable_database_fails_the_call_after_the_timeout() -> None:
    import psycopg_pool

    table = LeaseTable(
        "postgresql://root@127.0.0.1:1/nowhere", node_id="n", incarnation="i", timeout=0.5
    )
    with anyio.fail_after(30), pytest.raises(psycopg_pool.PoolTimeout):
        await table.acquire("c-1")
    await table.aclose()


async def test_nodes_starting_together_create_the_tables_once(
    open_table: Callable[..., Any], pg_dsn: str, names: dict[str, str]
) -> None:
    from sessionvisor.cluster import Inbox

    inbox_table = names["table"] + "_inbox"
    inboxes = [Inbox(pg_dsn, table=inbox_table) for _ in range(4)]

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(partial(open_table, f"node-{n}", inbox_table=inbox_table))
            tg.start_soon(inboxes[n].__aenter__)
    for inbox in inboxes:
        await inbox.aclose()

    found = sql(
        pg_dsn,
        "SELECT tablename FROM pg_tables WHERE tablename IN (%s, %s) ORDER BY 1",
        names["table"],
        inbox_table,
    )
    assert found == [(names["table"],), (inbox_table,)]
