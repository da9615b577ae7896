"""The PostgreSQL inbox: commands stored once, taken in order, deleted when done,
and a LISTEN/NOTIFY wake-up for when Redis is down."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from sessionvisor.cluster import Inbox
from tests._support.sql import sql

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
async def inbox(pg_dsn: str) -> AsyncIterator[Inbox]:
    async with Inbox(pg_dsn, table=f"inbox_{uuid.uuid4().hex[:8]}") as box:
        yield box


async def test_a_retried_command_id_is_stored_once(inbox: Inbox, pg_dsn: str) -> None:
    first = await inbox.post("c-1", "send", {"content": "hi"}, command_id="m-1")
    again = await inbox.post("c-1", "send", {"content": "hi"}, command_id="m-1")
    other = await inbox.post("c-2", "send", {"content": "hi"}, command_id="m-1")

    assert (first.command_id, first.created) == ("m-1", True)
    assert (again.command_id, again.created) == ("m-1", False)
    assert other.created  # ids are unique per conversation
    rows = sql(pg_dsn, f"SELECT conversation_id, command_id FROM {inbox.table} ORDER BY seq")
    assert rows == [("c-1", "m-1"), ("c-2", "m-1")]


async def test_a_post_is_committed_when_it_returns(inbox: Inbox, pg_dsn: str) -> None:
    posted = await inbox.post("c-1", "cancel")

    # Another connection (another node) sees it at once.
    rows = sql(pg_dsn, f"SELECT command_id, kind, payload FROM {inbox.table}")
    assert rows == [(posted.command_id, "cancel", "null")]
    assert posted.command_id.startswith("cmd-")


async def test_commands_are_taken_in_insertion_order_and_deleted_when_done(
    inbox: Inbox,
) -> None:
    kinds = ["send", "resume", "dismiss", "send", "cancel", "stop"]
    for i in range(30):
        await inbox.post("c-1", kinds[i % len(kinds)], {"n": i})  # type: ignore[arg-type]
        await inbox.post("c-2", "send", {"n": i})

    taken = await inbox.take("c-1")
    assert [c.payload["n"] for c in taken] == list(range(30))
    assert [c.kind for c in taken] == [kinds[i % len(kinds)] for i in range(30)]
    assert {c.conversation_id for c in taken} == {"c-1"}
    assert await inbox.pending_conversations() == ["c-1", "c-2"]

    first_ten = await inbox.take("c-1", limit=10)
    assert await inbox.done([c.seq for c in first_ten]) == 10
    assert await inbox.done([c.seq for c in first_ten]) == 0  # already gone
    rest = await inbox.take("c-1")
    assert [c.payload["n"] for c in rest] == list(range(10, 30))
    assert await inbox.done(c.seq for c in rest) == 20
    assert await inbox.take("c-1") == []
    assert await inbox.pending_conversations() == ["c-2"]


async def test_a_command_id_may_come_again_once_the_first_is_done(inbox: Inbox) -> None:
    await inbox.post("c-1", "send", "x", command_id="m-1")
    await inbox.done(c.seq for c in await inbox.take("c-1"))

    # The owner's state recognizes the message id from here on, not the inbox.
    assert (await inbox.post("c-1", "send", "x", command_id="m-1")).created


async def test_concurrent_posts_of_one_id_store_one_row(inbox: Inbox, pg_dsn: str) -> None:
    outcomes: list[bool] = []

    async def post() -> None:
        outcomes.append((await inbox.post("c-1", "send", "x", command_id="m-1")).created)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(post)

    assert sorted(outcomes) == [False] * 19 + [True]
    assert sql(pg_dsn, f"SELECT count(*) FROM {inbox.table}") == [(1,)]


async def test_payloads_round_trip_with_any_text(inbox: Inbox) -> None:
    payload = {"content": 'nul \u0000, emoji \U0001f600, quote " and \\', "parts": [1, 2.5, None]}
    await inbox.post("c-1", "send", payload)

    (command,) = await inbox.take("c-1")
    assert command.payload == payload


async def test_a_bad_command_is_refused_before_anything_is_stored(
    inbox: Inbox, pg_dsn: str
) -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        await inbox.post("c-1", "explode", {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not JSON-serializable"):
        await inbox.post("c-1", "send", {"x": object()})
    with pytest.raises(TypeError, match="not JSON-serializable"):
        await inbox.post("c-1", "send", float("nan"))
    with pytest.raises(ValueError, match="command_id"):
        await inbox.post("c-1", "send", "x", command_id="")
    with pytest.raises(ValueError, match="conversation_id"):
        await inbox.post("", "send", "x")
    with pytest.raises(TypeError, match="seqs"):
        await inbox.done(["1"])  # type: ignore[list-item]
    assert sql(pg_dsn, f"SELECT count(*) FROM {inbox.table}") == [(0,)]


async def test_a_listener_is_woken_by_each_new_command_only(inbox: Inbox) -> None:
    await inbox.post("c-0", "send", "before listening", command_id="m-1")
    async with inbox.listen() as listener:
        await inbox.post("c-1", "send", "x")
        await inbox.post("c-2", "send", "y")
        woken: set[str] = set()
        with anyio.fail_after(10):
            while woken != {"c-1", "c-2"}:
                woken |= await listener.wait(10)

        await inbox.post("c-0", "send", "retry", command_id="m-1")  # a duplicate: no row
        await inbox.post("c-3", "stop")
        assert await listener.wait(10) == {"c-3"}
        assert await listener.wait(0.05) == set()


async def test_an_inbox_made_by_the_first_version_takes_the_newer_kinds_and_keeps_its_rows(
    pg_dsn: str,
) -> None:
    # The table as the first version made it: an unnamed check of five kinds.
    table = f"inbox_{uuid.uuid4().hex[:8]}"
    sql(
        pg_dsn,
        f"CREATE TABLE {table} (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "conversation_id TEXT NOT NULL, command_id TEXT NOT NULL, "
        "kind TEXT NOT NULL CHECK (kind IN ('cancel', 'dismiss', 'resume', 'send', 'stop')), "
        "payload TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
        "UNIQUE (conversation_id, command_id))",
    )
    sql(
        pg_dsn,
        f"INSERT INTO {table} (conversation_id, command_id, kind, payload) "
        "VALUES ('c-1', 'm-old', 'send', '{\"content\": \"before\"}')",
    )
    for _ in range(2):  # a second start finds the table upgraded and changes nothing
        async with Inbox(pg_dsn, table=table) as inbox:
            await inbox.post("c-1", "regenerate", {"message_id": None}, command_id=f"r-{_}")
            await inbox.post("c-1", "edit", {"content": "x"}, command_id=f"e-{_}")
            with pytest.raises(Exception, match="check constraint"):
                sql(
                    pg_dsn,
                    f"INSERT INTO {table} (conversation_id, command_id, kind, payload) "
                    "VALUES ('c-1', 'bad', 'explode', 'null')",
                )
    async with Inbox(pg_dsn, table=table) as inbox:
        taken = await inbox.take("c-1")
    assert [(c.command_id, c.kind) for c in taken] == [
        ("m-old", "send"),
        ("r-0", "regenerate"),
        ("e-0", "edit"),
        ("r-1", "regenerate"),
        ("e-1", "edit"),
    ]
    assert taken[0].payload == {"content": "before"}
    checks = sql(
        pg_dsn,
        "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c'",
        table,
    )
    assert checks == [("inbox_kinds_2",)]


@pytest.mark.parametrize(
    ("table", "error"), [("bad-name", ValueError), ("a.b.c", ValueError), (3, TypeError)]
)
def test_an_inbox_refuses_a_bad_table_name(table: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="table"):
        Inbox("postgresql://nowhere/db", table=table)  # type: ignore[arg-type]


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_the_inbox_says_it_needs_asyncio(anyio_backend: str) -> None:
    with pytest.raises(RuntimeError, match="asyncio only"):
        await Inbox("postgresql://nowhere/db").post("c-1", "send", "x")
