"""The sweeper claims only work a start would do, and backs off a wake that keeps failing.

Nodes run in this process (one PostgreSQL database, one redis-server). What a
sweep did is read from the database (the lease rows: each claim is a new epoch
and counts in ``failures``) and from each node's metrics (``takeovers``, the
``wake`` background failures). That sweeps happened at all is shown by a
sentinel: a conversation left with unanswered work and no lease, created after
the setup, which a sweep must claim and answer; each answered sentinel is at
least one sweep more.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import structlog

from sessionvisor import SessionSupervisor, SingleRouter
from sessionvisor.cluster import LeaseTable
from sessionvisor.state import Message, PendingInterrupt, State, StoredConversation, dump_state
from sessionvisor.state.postgres import PostgresStore
from sessionvisor.testing import ScriptedAgent, wait_until
from tests._support.servers import RedisServer
from tests._support.sql import sql

from ._inprocess import in_process_nodes

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.redis]

TTL = 1.2  # a sweep every 0.3 s


def _router() -> SingleRouter:
    """Echoes; a conversation whose id holds ``broken`` cannot be built (its wake fails)."""

    def factory(agent_id: str, config: Any) -> ScriptedAgent:
        if "broken" in agent_id:
            raise RuntimeError(f"no agent for {agent_id}")
        return ScriptedAgent()

    return SingleRouter(factory)


def _nodes(dsn: str, redis: RedisServer, *names: str) -> Any:
    return in_process_nodes(dsn, redis, *names, router=lambda name: _router(), ttl=TTL)


def _cid(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}"


async def _store(dsn: str, cid: str, state: State, lifecycle: str, *, lease: str | None) -> None:
    """Save ``state`` as a node would have; with ``lease``, under a lease that node
    (an earlier run of it) then released, as a node does when a session ends."""
    record = StoredConversation(state=dump_state(state), route_key="default", owner="u")
    async with PostgresStore(dsn) as store:
        if lease is None:
            await store.save(cid, record, expected_version=None, lifecycle=lifecycle)  # type: ignore[arg-type]
            return
        async with LeaseTable(dsn, node_id=lease, incarnation="0000-gone", ttl=TTL) as table:
            taken = await table.acquire_fenced(cid, store)
            assert taken is not None
            await store.save(
                cid,
                record,
                expected_version=None,
                lifecycle=lifecycle,  # type: ignore[arg-type]
                epoch=taken.epoch,
            )
            await table.release([cid])


def _unanswered(text: str) -> State:
    """A turn the process died in: the user's message ends the history."""
    return State(messages=[Message(role="user", content=text)])


async def _answered(node: SessionSupervisor, cid: str) -> None:
    async def done() -> bool:
        state = await node.load(cid, scope="u")
        return state is not None and any(m.role == "assistant" for m in state.messages)

    await wait_until(done, timeout=20, interval=0.02, message=f"{cid} is answered")


async def _sweeps(dsn: str, nodes: Sequence[SessionSupervisor], count: int) -> None:
    """Wait for at least ``count`` more sweeps: one sentinel after another, each a
    conversation with unanswered work and no lease that a sweep claims and answers."""
    for _ in range(count):
        cid = _cid("sentinel")
        await _store(dsn, cid, _unanswered("are you there?"), "turn_start", lease=None)
        await _answered(nodes[0], cid)


def _takeovers(nodes: Sequence[SessionSupervisor]) -> int:
    return sum(n.metrics().cluster.takeovers for n in nodes)  # type: ignore[union-attr]


def _wake_failures(nodes: Sequence[SessionSupervisor]) -> int:
    return sum(n.metrics().background_failures.get("wake", 0) for n in nodes)


def _lease(dsn: str, cid: str) -> tuple[int, int, bool] | None:
    """The lease row's epoch, its failures, and whether its back-off runs now."""
    rows = sql(
        dsn,
        "SELECT epoch, failures, retry_at > now() FROM sessionvisor_leases "
        "WHERE conversation_id = %s",
        cid,
    )
    return None if not rows else (int(rows[0][0]), int(rows[0][1]), bool(rows[0][2]))


async def test_a_question_waiting_for_a_human_or_a_held_queue_is_not_swept(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    # Each was saved with a message queued behind it, but a start would keep that
    # queue held (it waits for the answer, or for the user after a cancel): the
    # store does not count it as work, and no sweep wakes it.
    asked = _cid("asked")
    question = PendingInterrupt(data={"question": "refund?"})
    state = State(
        messages=[Message(role="user", content="refund please")],
        queued=[Message(role="user", content="hello?")],
        interrupt=question,
    )
    await _store(pg_dsn, asked, state, "interrupt", lease="gone")
    held = _cid("held")
    state = State(
        messages=[Message(role="user", content="stop that")],
        queued=[Message(role="user", content="and then this")],
    )
    await _store(pg_dsn, held, state, "cancel", lease=None)
    flagged = sql(
        pg_dsn,
        "SELECT count(*) FROM sessionvisor_conversations WHERE id IN (%s, %s) AND unanswered",
        asked,
        held,
    )
    assert flagged == [(0,)]
    before = _lease(pg_dsn, asked)

    async with _nodes(pg_dsn, redis_server, "a", "b") as nodes:
        await _sweeps(pg_dsn, nodes, 4)
        # Only the sentinels were claimed: neither conversation was started anywhere.
        assert _takeovers(nodes) == 4
        assert _lease(pg_dsn, asked) == before
        assert _lease(pg_dsn, held) is None
        for node in nodes:
            assert node.get(asked, scope="u") is None and node.get(held, scope="u") is None
        stored = await nodes[0].load(asked, scope="u")
        assert stored is not None and stored.interrupt == question


async def test_a_wake_that_keeps_failing_backs_off_on_every_node_counted_and_logged_once(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    broken = _cid("broken")
    await _store(pg_dsn, broken, _unanswered("hi"), "turn_start", lease=None)

    with structlog.testing.capture_logs() as logs:
        async with _nodes(pg_dsn, redis_server, "a", "b") as nodes:
            # The first claim fails at once; the next waits 2 s, the one after 4 s more.
            await wait_until(lambda: _wake_failures(nodes) >= 3, timeout=30, interval=0.05)
            row = _lease(pg_dsn, broken)
            assert row is not None
            epoch, failures, backing_off = row
            # Every claim was one failed wake, counted in /metrics, and stored with the
            # lease (each claim a new epoch from 1).
            assert failures == epoch == _wake_failures(nodes)
            if backing_off:
                # While the back-off stored with the lease runs, no node claims it,
                # however many sweeps happen.
                await _sweeps(pg_dsn, nodes, 3)
                if _lease(pg_dsn, broken)[2]:  # type: ignore[index]
                    assert _lease(pg_dsn, broken) == (epoch, failures, True)
    warned = [
        e for e in logs if e["event"] == "cluster_wake_failed" and e["log_level"] == "warning"
    ]
    assert 1 <= len(warned) <= 2  # once on each node that tried
    assert _wake_failures(nodes) >= 3


async def test_fifty_failing_wakes_do_not_delay_a_dead_node_s_conversation(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    # Sixty conversations that cannot wake, released (their leases end at
    # -infinity, so they sort first), and one a node died with, its lease expired.
    broken = [_cid("broken") for _ in range(60)]
    for cid in broken:
        await _store(pg_dsn, cid, _unanswered("hi"), "turn_start", lease="gone")
    orphan = _cid("orphan")
    await _store(pg_dsn, orphan, _unanswered("still there?"), "turn_start", lease="gone")
    sql(
        pg_dsn,
        "UPDATE sessionvisor_leases SET lease_until = now() WHERE conversation_id = %s",
        orphan,
    )

    async with _nodes(pg_dsn, redis_server, "a") as nodes:
        await _answered(nodes[0], orphan)
        stored = await nodes[0].load(orphan, scope="u")
        assert stored is not None
        assert [m.content for m in stored.messages] == ["still there?", "echo: still there?"]
    # Each broken one was tried once (the first claim) and is put off now.
    rows = sql(
        pg_dsn,
        "SELECT failures FROM sessionvisor_leases WHERE conversation_id = ANY(%s)",
        broken,
    )
    assert rows and all(int(failures) >= 1 for (failures,) in rows)


# -- the claim statement itself, on tables of the test's own ----------------------


@asynccontextmanager
async def _tables(dsn: str, *nodes: str) -> AsyncIterator[tuple[PostgresStore, list[LeaseTable]]]:
    tag = uuid.uuid4().hex[:8]
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(PostgresStore(dsn, table=f"convs_{tag}"))
        tables = [
            await stack.enter_async_context(
                LeaseTable(
                    dsn,
                    node_id=node,
                    incarnation=f"0001-{node}",
                    ttl=30.0,
                    table=f"leases_{tag}",
                    store_table=f"convs_{tag}",
                )
            )
            for node in nodes
        ]
        yield store, tables


def _row(dsn: str, table: LeaseTable, cid: str) -> tuple[int, int, float | None]:
    """Epoch, failures, and seconds until retry_at (None: no back-off)."""
    rows = sql(
        dsn,
        f"SELECT epoch, failures, EXTRACT(EPOCH FROM retry_at - now()) FROM {table.table} "
        "WHERE conversation_id = %s",
        cid,
    )
    epoch, failures, left = rows[0]
    return int(epoch), int(failures), None if left is None else float(left)


async def test_each_claim_puts_the_next_one_off_until_a_wake_that_worked_clears_it(
    pg_dsn: str,
) -> None:
    async with _tables(pg_dsn, "a", "b") as (store, (a, b)):
        cid = _cid("c")
        record = StoredConversation(state=dump_state(_unanswered("hi")))
        await store.save(cid, record, expected_version=None, lifecycle="turn_start")

        [lease] = await a.claim_expired(first_retry=60.0)
        epoch, failures, left = _row(pg_dsn, a, cid)
        assert (epoch, failures) == (lease.epoch, 1) and left is not None and 55 < left <= 60
        await a.release([cid])  # its wake failed: let go, at -infinity
        assert await b.claim_expired(first_retry=60.0) == []  # put off, on every node
        assert await a.claim_expired(first_retry=60.0) == []

        await a.clear_retry(cid, lease.epoch)  # a wake that worked
        assert _row(pg_dsn, a, cid) == (lease.epoch, 0, None)
        [again] = await b.claim_expired(first_retry=60.0)
        assert again.epoch == lease.epoch + 1
        assert _row(pg_dsn, b, cid)[:2] == (again.epoch, 1)

        # The delay doubles with the claims since the last success, up to max_retry.
        await b.release([cid])
        sql(
            pg_dsn,
            f"UPDATE {b.table} SET failures = 3, retry_at = NULL WHERE conversation_id = %s",
            cid,
        )
        await a.claim_expired(first_retry=2.0, max_retry=120.0)
        left = _row(pg_dsn, a, cid)[2]
        assert left is not None and 14 < left <= 16  # 2 s * 2 ** 3
        await a.release([cid])
        sql(
            pg_dsn,
            f"UPDATE {a.table} SET failures = 400, retry_at = NULL WHERE conversation_id = %s",
            cid,
        )
        await b.claim_expired(first_retry=2.0, max_retry=120.0)
        left = _row(pg_dsn, b, cid)[2]
        assert left is not None and 115 < left <= 120


async def test_only_work_a_start_would_do_is_claimed(pg_dsn: str) -> None:
    async with _tables(pg_dsn, "a") as (store, (a,)):
        waiting = [Message(role="user", content="next")]
        saves = {
            "mid-turn": (_unanswered("hi"), "turn_start"),
            "queued": (State(queued=waiting), "queued"),
            "held-after-cancel": (State(queued=waiting), "cancel"),
            "held-after-error": (State(queued=waiting), "error"),
            "asked": (
                State(queued=waiting, interrupt=PendingInterrupt(data="ok?")),
                "interrupt",
            ),
            "answered": (State(messages=[Message(role="assistant", content="hi")]), "completion"),
        }
        for cid, (state, lifecycle) in saves.items():
            record = StoredConversation(state=dump_state(state))
            await store.save(cid, record, expected_version=None, lifecycle=lifecycle)  # type: ignore[arg-type]
        claimed = {lease.conversation_id for lease in await a.claim_expired()}
        assert claimed == {"mid-turn", "queued"}


async def test_the_leases_of_a_dead_lock_are_taken_before_they_expire(pg_dsn: str) -> None:
    """A row naming a lock key the table is told is dead counts as expired for the
    claim and for ``acquire``; other live rows do not."""
    from sessionvisor.cluster._liveness import LockLife

    async with _tables(pg_dsn, "a", "b") as (store, (a, b)):
        a.lock = LockLife(7001, float("inf"))
        dead, alive, idle = _cid("dead"), _cid("alive"), _cid("idle")
        for cid in (dead, alive):
            record = StoredConversation(state=dump_state(_unanswered("hi")))
            await store.save(cid, record, expected_version=None, lifecycle="turn_start")
        taken = {lease.conversation_id: lease for lease in await a.claim_expired()}
        assert taken.keys() == {dead, alive} and all(t.lock is a.lock for t in taken.values())
        assert await a.acquire(idle) is not None
        # The other row of a node whose lock is alive, and the same rows while b
        # does not know the lock is dead: nothing is taken.
        sql(
            pg_dsn,
            f"UPDATE {a.table} SET lock_key = 7002, retry_at = NULL WHERE conversation_id = %s",
            alive,
        )
        sql(pg_dsn, f"UPDATE {a.table} SET retry_at = NULL")
        assert await b.claim_expired() == []
        assert await b.acquire(idle) is None
        b.dead = frozenset({7001})
        assert {lease.conversation_id for lease in await b.claim_expired()} == {dead}
        lease = await b.acquire(idle)
        assert lease is not None and lease.epoch == 2
