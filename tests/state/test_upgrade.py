"""Databases written by the single-row layout (before the unanswered index and the
append-only history) open, read and write with this release, upgraded in place."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionvisor.state import (
    Message,
    SQLiteStore,
    State,
    StepRecord,
    StoredConversation,
    dump_state,
    load_state,
)
from tests._support.servers import require_server
from tests._support.sql import POSTGRES_DSN, sql

pytestmark = pytest.mark.anyio

# The DDL the single-row layout created, verbatim.
OLD_SQLITE_DDL = (
    """
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY, state TEXT, version INTEGER, owner TEXT, route_key TEXT,
        request_opts TEXT, last_seq INTEGER, updated_at TEXT, lifecycle TEXT
    )
    """,
    """
    CREATE TABLE quarantined_conversations (
        key TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, state TEXT, version INTEGER,
        owner TEXT, route_key TEXT, request_opts TEXT, last_seq INTEGER, updated_at TEXT,
        lifecycle TEXT, quarantined_at TEXT NOT NULL
    )
    """,
)
OLD_PG_DDL = (
    "CREATE TABLE {t} (id TEXT PRIMARY KEY, state JSONB, version BIGINT NOT NULL, owner TEXT, "
    "route_key TEXT, request_opts JSONB, last_seq BIGINT, updated_at TIMESTAMPTZ, lifecycle TEXT)",
    "CREATE TABLE {q} (key TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, state JSONB, "
    "version BIGINT, owner TEXT, route_key TEXT, request_opts JSONB, last_seq BIGINT, "
    "updated_at TIMESTAMPTZ, lifecycle TEXT, quarantined_at TIMESTAMPTZ NOT NULL)",
)


def state_of(*texts: str, queued: tuple[str, ...] = ()) -> dict[str, Any]:
    return dump_state(
        State(
            messages=[Message(role="user", content=t) for t in texts],
            queued=[Message(role="user", content=t) for t in queued],
            metadata={"k": "v"},
        )
    )


#: (id, state, version, lifecycle) rows as the old code wrote them.
OLD_ROWS: list[tuple[str, Any, int, str]] = [
    ("c-done", state_of("a", "b", "c"), 4, "completion"),
    ("c-turn", state_of("x"), 2, "turn_start"),
    ("c-held", state_of("y", queued=("later",)), 3, "completion"),  # queued after a turn: work
]


def texts(record: StoredConversation | None) -> list[str]:
    assert record is not None
    return [m.text() for m in load_state(record.state).messages]


def write_old_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for ddl in OLD_SQLITE_DDL:
            conn.execute(ddl)
        for cid, state, version, lifecycle in OLD_ROWS:
            conn.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cid,
                    json.dumps(state),
                    version,
                    "owner-1",
                    "r",
                    "{}",
                    7,
                    "2026-01-01T00:00:00+00:00",
                    lifecycle,
                ),
            )
        conn.execute(
            "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("c-broken", '{"messages": [', 1, None, None, "{}", 0, "2026-01-01", "queued"),
        )
    finally:
        conn.close()


async def test_an_old_sqlite_file_is_upgraded_on_first_open(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = tmp_path / "old.db"
    write_old_sqlite(path)

    async with SQLiteStore(path) as store:
        assert sorted(await store.unanswered()) == ["c-broken", "c-held", "c-turn"]
        done = await store.load("c-done")
        assert texts(done) == ["a", "b", "c"]
        assert done is not None and (done.version, done.owner, done.last_seq) == (4, "owner-1", 7)
        # It keeps working: a save on top of an old row, a new conversation.
        new_state = state_of("a", "b", "c", "d")
        assert (
            await store.save(
                "c-done",
                StoredConversation(state=new_state),
                expected_version=4,
                lifecycle="completion",
            )
            == 5
        )
        assert texts(await store.load("c-done")) == ["a", "b", "c", "d"]
        await store.save(
            "c-new",
            StoredConversation(state=state_of("n")),
            expected_version=None,
            lifecycle="completion",
        )
        assert texts(await store.load("c-new")) == ["n"]
        # A damaged old row stays damaged and readable as such, never replaced.
        from sessionvisor._errors import CorruptStateError

        with pytest.raises(CorruptStateError, match="'c-broken'"):
            await store.load("c-broken")
        assert await store.quarantine("c-broken") == "c-broken#quarantine-1"

    # The readable rows were cut into message rows; the damaged one was quarantined as it was.
    conn = sqlite3.connect(path)
    try:
        legacy = conn.execute("SELECT id FROM conversations WHERE state IS NOT NULL").fetchall()
        rows = conn.execute(
            "SELECT position FROM messages WHERE conversation_id = 'c-held'"
        ).fetchall()
        kept = conn.execute("SELECT state FROM quarantined_conversations").fetchall()
    finally:
        conn.close()
    assert legacy == []
    assert rows == [(0,)]
    assert kept == [('{"messages": [',)]

    # A second open finds nothing left to upgrade and reads the same.
    async with SQLiteStore(path) as store:
        assert texts(await store.load("c-held")) == ["y"]
        assert sorted(await store.unanswered()) == ["c-held", "c-turn"]


@pytest.fixture
def old_pg_table() -> Iterator[str]:
    require_server("PostgreSQL", 5432)
    from psycopg.types.json import Jsonb

    table = f"sv_old_{uuid.uuid4().hex[:10]}"
    for ddl in OLD_PG_DDL:
        sql(POSTGRES_DSN, ddl.format(t=table, q=f"{table}_quarantine"))
    for cid, state, version, lifecycle in OLD_ROWS:
        sql(
            POSTGRES_DSN,
            f"INSERT INTO {table} VALUES (%s, %s, %s, 'owner-1', 'r', '{{}}', 7, now(), %s)",
            cid,
            Jsonb(state),
            version,
            lifecycle,
        )
    yield table
    sql(POSTGRES_DSN, f"DROP TABLE IF EXISTS {table}, {table}_quarantine CASCADE")
    sql(POSTGRES_DSN, f"DROP TABLE IF EXISTS {table}_messages, {table}_qmessages CASCADE")
    sql(POSTGRES_DSN, f"DROP TABLE IF EXISTS {table}_steps, {table}_qsteps, {table}_timers")


@pytest.mark.postgres
async def test_an_old_postgres_table_is_upgraded_on_first_open(
    anyio_backend: str, old_pg_table: str
) -> None:
    from sessionvisor.state.postgres import PostgresStore

    async with PostgresStore(POSTGRES_DSN, table=old_pg_table) as store:
        assert sorted(await store.unanswered()) == ["c-held", "c-turn"]
        done = await store.load("c-done")
        assert texts(done) == ["a", "b", "c"]
        assert done is not None and (done.version, done.owner, done.last_seq) == (4, "owner-1", 7)
        new_state = state_of("a", "b", "c", "d")
        assert (
            await store.save(
                "c-done",
                StoredConversation(state=new_state),
                expected_version=4,
                lifecycle="completion",
            )
            == 5
        )
        assert texts(await store.load("c-done")) == ["a", "b", "c", "d"]

    [legacy] = sql(POSTGRES_DSN, f"SELECT count(*) FROM {old_pg_table} WHERE state IS NOT NULL")
    rows = sql(
        POSTGRES_DSN,
        f"SELECT conversation_id, count(*) FROM {old_pg_table}_messages "
        "GROUP BY conversation_id ORDER BY conversation_id",
    )
    assert legacy == (0,)
    assert rows == [("c-done", 4), ("c-held", 1), ("c-turn", 1)]

    async with PostgresStore(POSTGRES_DSN, table=old_pg_table) as store:
        assert texts(await store.load("c-held")) == ["y"]
        assert texts(await store.load("c-done")) == ["a", "b", "c", "d"]


# -- layout 2 (header and message rows, the audit trail still in the head) ---------------


class Trail(list):  # type: ignore[type-arg]
    __slots__ = ("__weakref__",)


def trail_state(*turns: str) -> dict[str, Any]:
    steps = [
        StepRecord(turn=turn, index=0, name="s", status="completed", result=turn) for turn in turns
    ]
    return dump_state(State(messages=[Message(role="user", content="hi")], steps=steps))


def turns_of(record: StoredConversation | None) -> list[str]:
    assert record is not None
    return [step["turn"] for step in load_state(record.state).model_dump()["steps"]]


async def test_a_layout_2_sqlite_file_gains_the_step_rows(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = tmp_path / "two.db"
    async with SQLiteStore(path) as store:
        await store.save(
            "c-1",
            StoredConversation(state=state_of("hi")),
            expected_version=None,
            lifecycle="completion",
        )
    # Made back into a layout-2 file, its head holding the trail as that release wrote it.
    conn = sqlite3.connect(path, isolation_level=None)
    head = json.loads(conn.execute("SELECT head FROM conversations").fetchone()[0])
    head["steps"] = trail_state("t1", "t2")["steps"]
    conn.execute("UPDATE conversations SET head = ?", (json.dumps(head),))
    for table in ("conversations", "quarantined_conversations"):
        conn.execute(f"ALTER TABLE {table} DROP COLUMN step_count")
    conn.execute("DROP TABLE steps")
    conn.execute("DROP TABLE quarantined_steps")
    conn.execute("PRAGMA user_version = 2")
    conn.close()

    async with SQLiteStore(path) as store:
        loaded = await store.load("c-1")
        assert turns_of(loaded) == ["t1", "t2"]
        assert loaded is not None
        grown = Trail([*loaded.state["steps"], trail_state("t3")["steps"][0]])
        await store.save(
            "c-1",
            StoredConversation(state={**loaded.state, "steps": grown}),
            expected_version=loaded.version,
            lifecycle="completion",
        )
        assert turns_of(await store.load("c-1")) == ["t1", "t2", "t3"]

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
        rows = conn.execute("SELECT position FROM steps ORDER BY position").fetchall()
        assert rows == [(0,), (1,), (2,)]
        head = json.loads(conn.execute("SELECT head FROM conversations").fetchone()[0])
        assert "steps" not in head
    finally:
        conn.close()


@pytest.mark.postgres
async def test_a_layout_2_postgres_table_gains_the_step_rows(anyio_backend: str) -> None:
    require_server("PostgreSQL", 5432)
    from sessionvisor.state.postgres import PostgresStore

    table = f"sv_two_{uuid.uuid4().hex[:10]}"
    try:
        async with PostgresStore(POSTGRES_DSN, table=table) as store:
            await store.save(
                "c-1",
                StoredConversation(state=state_of("hi")),
                expected_version=None,
                lifecycle="completion",
            )
        [(head_text,)] = sql(POSTGRES_DSN, f"SELECT head FROM {table}")
        head = json.loads(head_text)
        head["steps"] = trail_state("t1", "t2")["steps"]
        sql(POSTGRES_DSN, f"UPDATE {table} SET head = %s", json.dumps(head))
        sql(POSTGRES_DSN, f"ALTER TABLE {table} DROP COLUMN step_count")
        sql(POSTGRES_DSN, f"ALTER TABLE {table}_quarantine DROP COLUMN step_count")
        sql(POSTGRES_DSN, f"DROP TABLE {table}_steps, {table}_qsteps")
        sql(POSTGRES_DSN, f"COMMENT ON TABLE {table} IS 'sessionvisor layout 2'")

        async with PostgresStore(POSTGRES_DSN, table=table) as store:
            loaded = await store.load("c-1")
            assert turns_of(loaded) == ["t1", "t2"]
            assert loaded is not None
            grown = Trail([*loaded.state["steps"], trail_state("t3")["steps"][0]])
            await store.save(
                "c-1",
                StoredConversation(state={**loaded.state, "steps": grown}),
                expected_version=loaded.version,
                lifecycle="completion",
            )
            assert turns_of(await store.load("c-1")) == ["t1", "t2", "t3"]
        rows = sql(POSTGRES_DSN, f"SELECT position FROM {table}_steps ORDER BY position")
        assert rows == [(0,), (1,), (2,)]
        [(head_text,)] = sql(POSTGRES_DSN, f"SELECT head FROM {table}")
        assert "steps" not in json.loads(head_text)
    finally:
        sql(
            POSTGRES_DSN,
            f"DROP TABLE IF EXISTS {table}, {table}_quarantine, {table}_messages, "
            f"{table}_qmessages, {table}_steps, {table}_qsteps, {table}_timers",
        )
