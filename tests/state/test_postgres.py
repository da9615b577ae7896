"""What only PostgresStore promises beyond the shared contract."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from sessionvisor._errors import CorruptStateError, NothingStored, StaleWriteError
from sessionvisor.state import Message, State, StoredConversation, dump_state
from sessionvisor.testing import hold_commits
from tests._support.servers import require_server
from tests._support.sql import POSTGRES_DSN, sql

pytestmark = pytest.mark.anyio


def record(text: str) -> StoredConversation:
    return StoredConversation(
        state=dump_state(State(messages=[Message(role="user", content=text)]))
    )


def test_postgres_store_without_psycopg_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sessionvisor.state.postgres import PostgresStore

    # None in sys.modules makes "import psycopg" raise ImportError.
    monkeypatch.setitem(sys.modules, "psycopg", None)

    with pytest.raises(ImportError, match=r"pip install 'sessionvisor\[postgres\]'"):
        PostgresStore(POSTGRES_DSN)


@pytest.mark.parametrize("table", ["bad-name", "a.b.c", "x" * 53, "1abc", 'x"; DROP TABLE y'])
def test_postgres_store_refuses_a_table_name_it_cannot_quote_safely(table: str) -> None:
    from sessionvisor.state.postgres import PostgresStore

    with pytest.raises(ValueError, match="table name"):
        PostgresStore(POSTGRES_DSN, table=table)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    require_server("PostgreSQL", 5432)
    schema = f"sv_schema_{uuid.uuid4().hex[:10]}"
    sql(POSTGRES_DSN, f"CREATE SCHEMA {schema}")
    yield schema
    sql(POSTGRES_DSN, f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.postgres
async def test_postgres_store_works_in_a_named_schema(anyio_backend: str, pg_schema: str) -> None:
    from sessionvisor.state.postgres import PostgresStore

    async with PostgresStore(POSTGRES_DSN, table=f"{pg_schema}.convs") as store:
        await store.save("c-1", record("hi"), expected_version=None, lifecycle="queued")
        loaded = await store.load("c-1")

    assert loaded is not None
    found = sql(
        POSTGRES_DSN,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
        "ORDER BY table_name",
        pg_schema,
    )
    assert [row[0] for row in found] == [
        "convs",
        "convs_messages",
        "convs_qmessages",
        "convs_qsteps",
        "convs_quarantine",
        "convs_steps",
        "convs_timers",
    ]


@pytest.mark.postgres
async def test_postgres_keeps_one_text_row_per_message_and_reads_damage_as_corrupt(
    anyio_backend: str, pg_schema: str
) -> None:
    from sessionvisor.state.postgres import PostgresStore

    table = f"{pg_schema}.convs"
    async with PostgresStore(POSTGRES_DSN, table=table) as store:
        # U+0000 cannot live in JSONB; the TEXT rows keep it.
        await store.save("c-1", record("hi\u0000there"), expected_version=None, lifecycle="queued")
        loaded = await store.load("c-1")
        assert loaded is not None
        assert loaded.state["messages"][0]["content"] == "hi\u0000there"
        rows = sql(POSTGRES_DSN, f"SELECT position, body FROM {table}_messages")
        sql(POSTGRES_DSN, f"UPDATE {table} SET head = '[1, 2]'")

        with pytest.raises(CorruptStateError, match=r"'c-1'.*head is a JSON list"):
            await store.load("c-1")

    assert [position for position, _ in rows] == [0]
    assert '"hi\\u0000there"' in rows[0][1]


@pytest.mark.postgres
async def test_a_missing_or_garbled_message_row_is_corrupt_and_left_alone(
    anyio_backend: str, pg_schema: str
) -> None:
    from sessionvisor.state.postgres import PostgresStore

    table = f"{pg_schema}.convs"
    state = dump_state(State(messages=[Message(role="user", content=t) for t in "abc"]))
    async with PostgresStore(POSTGRES_DSN, table=table) as store:
        await store.save(
            "c-1", StoredConversation(state=state), expected_version=None, lifecycle="queued"
        )
        sql(POSTGRES_DSN, f"DELETE FROM {table}_messages WHERE position = 1")
        with pytest.raises(CorruptStateError, match=r"'c-1'.*position 1 is missing"):
            await store.load("c-1")
        sql(POSTGRES_DSN, f"INSERT INTO {table}_messages VALUES ('c-1', 1, '{{\"role\": ')")
        with pytest.raises(CorruptStateError, match=r"'c-1'.*position 1 is not valid JSON"):
            await store.load("c-1")
        [(body,)] = sql(POSTGRES_DSN, f"SELECT body FROM {table}_messages WHERE position = 1")
    assert body == '{"role": '


@pytest.mark.postgres
async def test_postgres_store_reconnects_after_its_connection_dies(
    anyio_backend: str, pg_schema: str
) -> None:
    import psycopg

    from sessionvisor.state.postgres import PostgresStore

    async with PostgresStore(POSTGRES_DSN, table=f"{pg_schema}.convs", max_connections=1) as store:
        await store.save("c-1", record("hi"), expected_version=None, lifecycle="queued")
        # Kill the store's pooled session, as a server restart would.
        sql(
            POSTGRES_DSN,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND query LIKE %s",
            f"%{pg_schema}%",
        )

        failures: list[Any] = []
        for _ in range(2):
            try:
                loaded = await store.load("c-1")
            except psycopg.OperationalError as exc:
                failures.append(exc)

    # At most the call that found the dead connection fails; the next works.
    assert len(failures) <= 1
    assert loaded is not None


@pytest.fixture
async def pg_store(anyio_backend: str, pg_schema: str) -> Any:
    from sessionvisor.state.postgres import PostgresStore

    async with PostgresStore(POSTGRES_DSN, table=f"{pg_schema}.convs") as store:
        yield store


@pytest.mark.postgres
async def test_a_write_below_the_fenced_epoch_is_stale_and_changes_nothing(pg_store: Any) -> None:
    store = pg_store
    assert (
        await store.save("c-1", record("a"), expected_version=None, lifecycle="queued", epoch=1)
        == 1
    )
    # A new owner takes over with epoch 2 and fences the conversation.
    assert await store.fence("c-1", 2) == 2

    with pytest.raises(StaleWriteError, match=r"'c-1'.*epoch is 2, above this writer's 1"):
        await store.save(
            "c-1", record("old owner"), expected_version=1, lifecycle="completion", epoch=1
        )

    loaded = await store.load("c-1")
    assert loaded is not None
    assert (loaded.version, loaded.state["messages"][0]["content"]) == (1, "a")
    # The new owner writes with its epoch; a lower fence never lowers it.
    assert (
        await store.save(
            "c-1", record("new owner"), expected_version=1, lifecycle="completion", epoch=2
        )
        == 2
    )
    assert await store.fence("c-1", 1) == 2
    assert (
        await store.save("c-1", record("x"), expected_version=2, lifecycle="completion", epoch=3)
        == 3
    )
    assert await store.fence("c-1", 2) == 3


@pytest.mark.postgres
async def test_fencing_a_conversation_with_nothing_stored_leaves_a_placeholder(
    pg_store: Any,
) -> None:
    store = pg_store
    assert await store.fence("c-new", 5) == 5

    assert await store.load("c-new") is None
    assert await store.unanswered() == []
    with pytest.raises(NothingStored):
        await store.quarantine("c-new")
    with pytest.raises(StaleWriteError):
        await store.save(
            "c-new", record("late"), expected_version=None, lifecycle="queued", epoch=4
        )
    assert (
        await store.save(
            "c-new", record("mine"), expected_version=None, lifecycle="queued", epoch=5
        )
        == 1
    )
    # Without an epoch (single-node use) the placeholder is taken too.
    assert await store.fence("c-free", 1) == 1
    assert await store.save("c-free", record("hi"), expected_version=None, lifecycle="queued") == 1
    assert sorted(await store.unanswered()) == ["c-free", "c-new"]


@pytest.mark.postgres
async def test_a_statement_failing_in_a_batch_fails_only_its_own_save(pg_store: Any) -> None:
    import psycopg

    store = pg_store
    outcomes: dict[str, Any] = {}

    async def save(cid: str, epoch: int | None) -> None:
        try:
            outcomes[cid] = await store.save(
                cid, record(cid), expected_version=None, lifecycle="queued", epoch=epoch
            )
        except Exception as exc:
            outcomes[cid] = exc

    async with anyio.create_task_group() as tg, hold_commits(store):
        tg.start_soon(save, "c-a", None)
        tg.start_soon(save, "c-huge", 2**70)  # out of bigint's range: the server refuses it
        tg.start_soon(save, "c-b", 3)
        await anyio.wait_all_tasks_blocked()

    assert outcomes["c-a"] == 1
    assert outcomes["c-b"] == 1
    assert isinstance(outcomes["c-huge"], psycopg.Error)
    assert await store.load("c-huge") is None
    assert await store.load("c-a") is not None


@pytest.mark.postgres
async def test_epoch_must_be_an_int(pg_store: Any) -> None:
    with pytest.raises(TypeError, match="epoch"):
        await pg_store.save(
            "c-1", record("a"), expected_version=None, lifecycle="queued", epoch="2"
        )
    with pytest.raises(TypeError, match="epoch"):
        await pg_store.fence("c-1", 2.0)


@pytest.mark.postgres
async def test_the_first_calls_of_a_busy_server_arrive_together_and_all_succeed(
    anyio_backend: str, pg_schema: str
) -> None:
    # A server's store is not entered before its first requests: many calls then
    # open the pool at once, each from its own worker thread.
    from sessionvisor.state.postgres import PostgresStore

    store = PostgresStore(POSTGRES_DSN, table=f"{pg_schema}.convs", max_connections=8)
    found: list[StoredConversation | None] = []

    async def load(cid: str) -> None:
        found.append(await store.load(cid))

    try:
        async with anyio.create_task_group() as tg:
            for n in range(24):
                tg.start_soon(load, f"c-{n}")
    finally:
        await store.aclose()
    assert found == [None] * 24


@pytest.mark.postgres
async def test_the_header_gives_owner_and_interrupt_without_reading_a_message_row(
    pg_store: Any, pg_schema: str
) -> None:
    from sessionvisor.state import PendingInterrupt

    store = pg_store
    assert await store.load_header("c-1") is None
    state = State(
        messages=[Message(role="user", content=f"m{i}") for i in range(3)],
        interrupt=PendingInterrupt(kind="question", data={"q": "go?"}),
    )
    stored = StoredConversation(state=dump_state(state), owner="alice")
    await store.save("c-1", stored, expected_version=None, lifecycle="interrupt")
    # Without its message rows the conversation cannot be loaded, but its header
    # (what a node that does not serve it needs) still reads: no message row is read.
    sql(POSTGRES_DSN, f"DELETE FROM {pg_schema}.convs_messages")
    with pytest.raises(CorruptStateError):
        await store.load("c-1")
    header = await store.load_header("c-1")
    assert header is not None
    assert header.owner == "alice"
    assert header.interrupt is not None and header.interrupt.data == {"q": "go?"}
    assert header.interrupt.id == state.interrupt.id  # type: ignore[union-attr]

    sql(POSTGRES_DSN, f"UPDATE {pg_schema}.convs SET head = 'not json'")
    with pytest.raises(CorruptStateError, match=r"'c-1'.*not JSON"):
        await store.load_header("c-1")
