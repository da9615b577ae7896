"""Two or three supervisors in one process, each a node of one cluster (one
PostgreSQL database, one redis-server): what a user sees through any node.

The faults that need real processes (kill -9, SIGSTOP, rolling restarts) are in
``test_nodes*.py``; here the nodes share an event loop, which makes the
ordinary paths quick to check.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from sessionvisor import InvalidStatus, SessionSupervisor, SingleRouter, Status
from sessionvisor.cluster import Cluster, LeaseTable
from sessionvisor.sessions._events import Delta, Event, StatusChanged
from sessionvisor.state.postgres import PostgresStore
from sessionvisor.testing import ScriptedAgent, wait_until
from tests._support.servers import RedisServer
from tests._support.sql import sql

from ._inprocess import in_process_nodes

pytestmark = pytest.mark.anyio


def _echo() -> SingleRouter:
    """Replies "echo: <text>", streamed word by word."""
    return SingleRouter(lambda agent_id, config: ScriptedAgent(stream=True))


def _nodes(
    dsn: str, redis: RedisServer, *names: str, router: Callable[[], Any] = _echo, ttl: float = 3.0
) -> Any:
    return in_process_nodes(dsn, redis, *names, router=lambda name: router(), ttl=ttl)


def _cid() -> str:
    return "c-" + uuid.uuid4().hex[:10]


async def _answered(node: SessionSupervisor, cid: str, count: int) -> list[tuple[str, str]]:
    async def done() -> bool:
        state = await node.load(cid, scope="u")
        replies = [m for m in state.messages if m.role == "assistant"] if state else []
        return len(replies) >= count

    # A store read: every 20 ms, not every 1 ms.
    await wait_until(done, timeout=15, interval=0.02, message=f"{count} replies in {cid}")
    state = await node.load(cid, scope="u")
    assert state is not None
    return [(m.role, str(m.content)) for m in state.messages]


async def _died_with_unanswered(dsn: str, cid: str, *, node_id: str, ttl: float) -> None:
    """Leave ``cid`` as a node that died would: its lease (``ttl``) held by an
    earlier incarnation of ``node_id``, and a user message stored unanswered."""
    from sessionvisor.state import Message, State, StoredConversation, dump_state

    async with (
        LeaseTable(dsn, node_id=node_id, incarnation="0000-earlier", ttl=ttl) as old,
        PostgresStore(dsn) as store,
    ):
        lease = await old.acquire_fenced(cid, store)
        assert lease is not None
        state = State(messages=[Message(role="user", content="unanswered")])
        record = StoredConversation(state=dump_state(state), route_key="default", owner="u")
        await store.save(
            cid, record, expected_version=None, lifecycle="turn_start", epoch=lease.epoch
        )


async def test_a_message_sent_to_any_node_is_answered_once_in_order(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    async with _nodes(pg_dsn, redis_server, "a", "b", "c") as (a, b, c):
        cid = _cid()
        first = await a.send(cid, "one", scope="u", message_id="m1")
        assert first.started and not first.queued  # a took it
        remote = await b.send(cid, "two", scope="u", message_id="m2")
        assert not remote.started  # b posted it to a
        # The client retries the same message on c: stored once.
        await c.send(cid, "two", scope="u", message_id="m2")
        await a.send(cid, "three", scope="u", message_id="m3")
        history = await _answered(a, cid, 3)
        users = [text for role, text in history if role == "user"]
        assert users == ["one", "two", "three"]
        assert [text for role, text in history if role == "assistant"][-1] == "echo: three"
        # One owner: the lease names a, and the store carries a's epoch.
        lease = sql(
            pg_dsn,
            "SELECT node_id, epoch FROM sessionvisor_leases WHERE conversation_id = %s",
            cid,
        )
        stored = sql(pg_dsn, "SELECT epoch FROM sessionvisor_conversations WHERE id = %s", cid)
        assert lease[0][0] == "a" and lease[0][1] == stored[0][0]
        assert a.get(cid, scope="u") is not None and b.get(cid, scope="u") is None


async def test_start_on_a_node_that_does_not_serve_it_answers_without_a_handle(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    async with _nodes(pg_dsn, redis_server, "a", "b") as (a, b):
        cid = _cid()
        info = await a.start(cid, scope="u")
        assert info.started and info.handle is not None
        elsewhere = await b.start(cid, scope="u")
        assert not elsewhere.started and elsewhere.handle is None
        assert elsewhere.agent_id == info.agent_id


async def test_another_owner_is_refused_on_every_node(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    from sessionvisor import AccessDenied

    async with _nodes(pg_dsn, redis_server, "a", "b") as (a, b):
        cid = _cid()
        await a.send(cid, "mine", scope="u")
        with pytest.raises(AccessDenied):
            await b.send(cid, "not yours", scope="intruder")
        with pytest.raises(AccessDenied):
            await b.stop(cid, scope="intruder")
        history = await _answered(a, cid, 1)
        assert [t for r, t in history if r == "user"] == ["mine"]


async def test_a_subscriber_on_another_node_gets_every_event_in_order(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    async with _nodes(pg_dsn, redis_server, "a", "b") as (a, b):
        cid = _cid()
        await a.start(cid, scope="u")
        seen: list[Event] = []
        async with b.subscribe(cid, scope="u") as sub:
            await a.send(cid, "hi", scope="u")
            with anyio.fail_after(15):
                async for event in sub:
                    seen.append(event)
                    idle = isinstance(event, StatusChanged) and event.status is Status.IDLE
                    if idle and any(isinstance(e, Delta) for e in seen):
                        break
        seqs = [e.seq for e in seen[1:]]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no repeat
        assert "".join(e.text for e in seen if isinstance(e, Delta)).split() == ["echo:", "hi"]


async def test_resume_and_stop_reach_the_owner_from_another_node(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    async with _nodes(pg_dsn, redis_server, "a", "b") as (a, b):
        cid = _cid()
        await a.send(cid, "hello", scope="u")
        await _answered(a, cid, 1)
        with pytest.raises(InvalidStatus):
            await b.resume(cid, "yes", scope="u")  # nothing is pending: refused at once
        assert await b.stop(cid, scope="u") == "stopped"
        await wait_until(lambda: a.get(cid, scope="u") is None, timeout=10, interval=0.02)
        # Stopped and released: the next message is answered again (by the node
        # that takes the conversation: b, or a if b still thought a had it).
        await b.send(cid, "again", scope="u")
        history = await _answered(b, cid, 2)
        assert [t for r, t in history if r == "user"] == ["hello", "again"]


async def test_leaving_gives_the_leases_up_so_another_node_serves_at_once(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    async with _nodes(pg_dsn, redis_server, "b", ttl=60.0) as (b,):
        cid = _cid()
        async with _nodes(pg_dsn, redis_server, "a", ttl=60.0) as (a,):
            await a.send(cid, "first", scope="u")
            await _answered(a, cid, 1)
        # a drained and released: with a 60 s TTL, b could not take it otherwise.
        delivery = await b.send(cid, "second", scope="u")
        assert delivery.started
        history = await _answered(b, cid, 2)
        assert [t for r, t in history if r == "user"] == ["first", "second"]


async def test_a_restarted_node_takes_its_earlier_run_s_leases_back_at_once(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    cid = _cid()
    # An earlier run of node "a" died with a long lease left.
    await _died_with_unanswered(pg_dsn, cid, node_id="a", ttl=600.0)
    async with _nodes(pg_dsn, redis_server, "a", ttl=600.0) as (a,):
        history = await _answered(a, cid, 1)
        assert history == [("user", "unanswered"), ("assistant", "echo: unanswered")]


async def test_the_cluster_mode_refuses_trio_clearly(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    async def enter() -> None:
        async with PostgresStore(pg_dsn) as store:
            supervisor = SessionSupervisor(
                _echo(), store=store, cluster=Cluster(redis_server.url, node_id="t")
            )
            async with supervisor:
                pass

    with pytest.raises(RuntimeError, match="asyncio"):
        anyio.run(enter, backend="trio")


async def test_each_node_counts_its_leases_and_the_commands_it_posted_and_applied(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    import httpx

    from sessionvisor.http import create_app
    from tests.http._support import serve

    async with _nodes(pg_dsn, redis_server, "a", "b") as (a, b):
        cid = _cid()
        await a.send(cid, "one", scope="u")
        await b.send(cid, "two", scope="u")
        await _answered(a, cid, 2)
        on_a, on_b = a.metrics().cluster, b.metrics().cluster
        assert on_a is not None and on_b is not None
        assert (on_a.leases_held, on_b.leases_held) == (1, 0)
        assert (on_a.commands_applied, on_b.commands_posted) == (1, 1)
        assert on_a.takeovers == on_a.leases_lost == 0
        # The same figures on the node's /metrics page.
        async with (
            serve(create_app(a)) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as client,
        ):
            page = (await client.get("/metrics")).text
        assert "sessionvisor_cluster_leases_held 1.0" in page
        assert "sessionvisor_cluster_commands_applied_total 1.0" in page
    async with SessionSupervisor(_echo()) as local:
        assert local.metrics().cluster is None


async def test_a_subscriber_elsewhere_starts_from_the_owner_s_status_and_interrupt(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    async with _nodes(pg_dsn, redis_server, "a", "b") as (a, b):
        cid = _cid()
        await a.send(cid, "please interrupt", scope="u")

        async def first_seen_on_b(wanted: Status) -> StatusChanged:
            """The first event of a new subscription on b, once it shows ``wanted``
            (the owner's events reach Redis a moment after they happen)."""
            seen: list[StatusChanged] = []

            async def shows_it() -> bool:
                async with b.subscribe(cid, scope="u") as sub:
                    first = await sub.__anext__()
                assert isinstance(first, StatusChanged)
                seen.append(first)
                return first.status is wanted

            await wait_until(shows_it, timeout=15, interval=0.02)
            return seen[-1]

        first = await first_seen_on_b(Status.INTERRUPTED)
        assert first.interrupt is not None and first.seq > 0
        # Answered from b, through the inbox, and the turn completes on a.
        assert await b.resume(cid, "yes", scope="u") is Status.RUNNING
        history = await _answered(a, cid, 1)
        assert history[0] == ("user", "please interrupt")
        assert (await first_seen_on_b(Status.IDLE)).interrupt is None


async def test_an_answer_applied_again_never_answers_a_later_question(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    from sessionvisor.cluster import Inbox

    agents: list[ScriptedAgent] = []

    def router() -> SingleRouter:
        def make(agent_id: str, config: Any) -> ScriptedAgent:
            agents.append(ScriptedAgent())
            return agents[-1]

        return SingleRouter(make)

    async with _nodes(pg_dsn, redis_server, "a", "b", router=router) as (a, b):
        cid = _cid()
        await a.send(cid, "please interrupt", scope="u")
        await wait_until(
            lambda: (
                (handle := a.get(cid, scope="u")) is not None
                and handle.status is Status.INTERRUPTED
            ),
            timeout=15,
            interval=0.02,
        )
        # A row left over from an earlier question (its owner died before deleting
        # it), then the user's answer to the question pending now, through b.
        async with Inbox(pg_dsn) as inbox:
            await inbox.post(
                cid,
                "resume",
                {"answer": "stale", "interrupt": {"kind": "question", "data": "old"}, "owner": "u"},
            )
        assert await b.resume(cid, "yes", scope="u") is Status.RUNNING
        await _answered(a, cid, 1)
        assert [answer for agent in agents for answer in agent.answers] == ["yes"]


async def test_a_claimed_conversation_that_fails_to_wake_is_let_go_and_claimed_again(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    cid = _cid()
    # A node that died with a message unanswered; its lease (0.2 s) runs out at once.
    await _died_with_unanswered(pg_dsn, cid, node_id="gone", ttl=0.2)
    # ... and its stored row cannot be read: the wake fails before any start.
    head = sql(pg_dsn, "SELECT head FROM sessionvisor_conversations WHERE id = %s", cid)[0][0]
    sql(pg_dsn, "UPDATE sessionvisor_conversations SET head = 'not json' WHERE id = %s", cid)

    def lease_row() -> tuple[object, ...]:
        return sql(
            pg_dsn,
            "SELECT node_id, lease_until > now() FROM sessionvisor_leases "
            "WHERE conversation_id = %s",
            cid,
        )[0]

    async with _nodes(pg_dsn, redis_server, "a", ttl=3.0) as (a,):
        with anyio.fail_after(15):
            await wait_until(
                lambda: a.metrics().cluster.takeovers > 0,  # type: ignore[union-attr]
                timeout=15,
                interval=0.02,
            )
            # Not kept (and renewed for ever) with no session behind it.
            await wait_until(lambda: lease_row() == ("a", False), timeout=15, interval=0.02)
        assert a.get(cid, scope="u") is None
        sql(pg_dsn, "UPDATE sessionvisor_conversations SET head = %s WHERE id = %s", head, cid)
        history = await _answered(a, cid, 1)  # claimed again by a later sweep
        assert history == [("user", "unanswered"), ("assistant", "echo: unanswered")]


async def test_a_conversation_that_keeps_failing_to_wake_is_tried_with_a_backoff(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    """The sweeper does not claim and fail the same conversation on every sweep: each
    failure puts it off for longer (2 s, 4 s, ...), logged once and counted."""
    import structlog

    cid = _cid()
    await _died_with_unanswered(pg_dsn, cid, node_id="gone", ttl=0.2)
    head = sql(pg_dsn, "SELECT head FROM sessionvisor_conversations WHERE id = %s", cid)[0][0]
    sql(pg_dsn, "UPDATE sessionvisor_conversations SET head = 'not json' WHERE id = %s", cid)

    with structlog.testing.capture_logs() as logs:
        # lease_ttl 1 s: a sweep every 0.25 s, which without a backoff would try the
        # wake about 24 times in the 6 s watched here.
        async with _nodes(pg_dsn, redis_server, "a", ttl=1.0) as (a,):
            await wait_until(
                lambda: a.metrics().background_failures.get("wake", 0) > 0,
                timeout=15,
                interval=0.02,
            )
            await anyio.sleep(6.0)  # the window whose tries are counted
            tries = a.metrics().background_failures["wake"]
            assert 2 <= tries <= 5
            failed = [e for e in logs if e["event"] == "cluster_wake_failed"]
            assert len([e for e in failed if e["log_level"] == "warning"]) == 1

            sql(pg_dsn, "UPDATE sessionvisor_conversations SET head = %s WHERE id = %s", head, cid)
            history = await _answered(a, cid, 1)  # tried again after its backoff, and woken
            assert history == [("user", "unanswered"), ("assistant", "echo: unanswered")]
