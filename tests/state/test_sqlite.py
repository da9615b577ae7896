"""What only SQLiteStore promises: the file, WAL, processes, closing."""

from __future__ import annotations

import json
import sqlite3
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from sessionvisor._errors import CorruptStateError, StoreClosed
from sessionvisor.state import Message, SQLiteStore, State, StoredConversation, dump_state
from sessionvisor.testing import sqlite_synchronous

pytestmark = pytest.mark.anyio


def record(text: str, **fields: object) -> StoredConversation:
    return StoredConversation(
        state=dump_state(State(messages=[Message(role="user", content=text)])),
        **fields,  # type: ignore[arg-type]
    )


async def test_the_file_is_in_wal_mode_with_both_tables(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path):
        pass

    conn = sqlite3.connect(path)
    try:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert mode == "wal"
    assert {"conversations", "quarantined_conversations"} <= tables


async def test_the_file_is_opened_on_first_use_not_on_construction(tmp_path: Path) -> None:
    path = tmp_path / "lazy.db"
    store = SQLiteStore(str(path))
    assert not path.exists()

    await store.save("c-1", record("hi"), expected_version=None, lifecycle="queued")

    assert path.exists()
    await store.aclose()


async def test_a_private_in_memory_database_works(anyio_backend: str) -> None:
    async with SQLiteStore(":memory:") as store:
        assert await store.save("c-1", record("hi"), expected_version=None, lifecycle="queued") == 1
        loaded = await store.load("c-1")

    assert loaded is not None
    assert loaded.state["messages"][0]["content"] == "hi"


async def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.save("c-1", record("hi"), expected_version=None, lifecycle="queued")
    await store.aclose()
    await store.aclose()  # idempotent

    with pytest.raises(RuntimeError, match="closed"):
        await store.load("c-1")


async def test_the_history_is_stored_as_one_json_row_per_message(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        await store.save(
            "c-1", record("héllo", request_opts={"k": 1}), expected_version=None, lifecycle="queued"
        )

    conn = sqlite3.connect(path)
    try:
        head, count, opts, state = conn.execute(
            "SELECT head, message_count, request_opts, state FROM conversations"
        ).fetchone()
        bodies = conn.execute("SELECT position, body FROM messages").fetchall()
    finally:
        conn.close()
    assert "messages" not in json.loads(head)
    assert json.loads(head)["queued"] == []
    assert count == 1
    assert state is None
    assert [(p, json.loads(b)["content"]) for p, b in bodies] == [(0, "héllo")]
    assert json.loads(opts) == {"k": 1}


class History(list[dict[str, object]]):
    """A weakly-referenceable list, as the runtime hands its history over."""

    __slots__ = ("__weakref__",)


def bodies_of(path: Path, cid: str) -> list[tuple[int, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT position, body FROM messages WHERE conversation_id = ? ORDER BY position",
            (cid,),
        ).fetchall()
    finally:
        conn.close()


def count_row_writes(path: Path) -> None:
    """Log every write to the message rows, through triggers."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("CREATE TABLE row_writes (what TEXT)")
        for op, ref in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
            conn.execute(
                f"CREATE TRIGGER log_{op} AFTER {op} ON messages BEGIN "
                f"INSERT INTO row_writes VALUES ('{op.lower()} ' || {ref}.position); END"
            )
    finally:
        conn.close()


def row_writes(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT what FROM row_writes ORDER BY rowid")]
    finally:
        conn.close()


def message(text: str) -> dict[str, object]:
    return Message(role="user", content=text).model_dump(mode="json")


async def test_a_growing_history_writes_only_its_new_messages(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = tmp_path / "s.db"
    history = History([message("a")])
    base = dump_state(State())
    async with SQLiteStore(path) as store:
        version = await store.save(
            "c-1",
            StoredConversation(state={**base, "messages": history}),
            expected_version=None,
            lifecycle="queued",
        )
        written = bodies_of(path, "c-1")
        count_row_writes(path)
        history.extend([message("b"), message("c")])
        version = await store.save(
            "c-1",
            StoredConversation(state={**base, "messages": history}),
            expected_version=version,
            lifecycle="completion",
        )
        # Only the tail was written: two inserts, nothing deleted or updated.
        assert row_writes(path) == ["insert 1", "insert 2"]
        after = bodies_of(path, "c-1")
        assert after[:1] == written
        assert [json.loads(b)["content"] for _, b in after] == ["a", "b", "c"]

        # A different (shorter) list is a rewrite: the rows match it exactly.
        rewritten = History([message("z")])
        version = await store.save(
            "c-1",
            StoredConversation(state={**base, "messages": rewritten}),
            expected_version=version,
            lifecycle="completion",
        )
        assert [json.loads(b)["content"] for _, b in bodies_of(path, "c-1")] == ["z"]
        # A plain list (no weak reference possible) is always written whole.
        plain = [message("p"), message("q")]
        await store.save(
            "c-1",
            StoredConversation(state={**base, "messages": plain}),
            expected_version=version,
            lifecycle="completion",
        )
        loaded = await store.load("c-1")

    assert loaded is not None
    assert [m["content"] for m in loaded.state["messages"]] == ["p", "q"]


async def test_a_history_rewritten_by_another_writer_is_not_appended_to(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = tmp_path / "s.db"
    history = History([message("a"), message("b")])
    base = dump_state(State())
    async with SQLiteStore(path) as mine, SQLiteStore(path) as other:
        await mine.save(
            "c-1",
            StoredConversation(state={**base, "messages": history}),
            expected_version=None,
            lifecycle="queued",
        )
        # Another store deletes and re-creates the conversation at the same version.
        await other.delete("c-1")
        await other.save(
            "c-1",
            StoredConversation(state={**base, "messages": [message("x")]}),
            expected_version=None,
            lifecycle="queued",
        )
        history.append(message("c"))
        await mine.save(
            "c-1",
            StoredConversation(state={**base, "messages": history}),
            expected_version=1,
            lifecycle="completion",
        )
        loaded = await other.load("c-1")

    assert loaded is not None
    assert [m["content"] for m in loaded.state["messages"]] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("sql", "value", "problem"),
    [
        ("UPDATE conversations SET head = ?", "[1, 2]", "head is a JSON list, not an object"),
        ("UPDATE conversations SET head = ?", "{oops", "head is not valid JSON"),
        ("UPDATE conversations SET head = NULL, state = ?", None, "state is NULL"),
        ("UPDATE messages SET body = ?", '{"role": "robot"}', "messages.0.role"),
        ("UPDATE messages SET body = ?", '{"role": "us', "message at position 0 is not valid JSON"),
        ("UPDATE messages SET body = ?", None, "message at position 0 is not valid JSON"),
        ("DELETE FROM messages WHERE ? IS NULL", None, "message at position 0 is missing"),
        ("UPDATE conversations SET request_opts = ?", "{oops", "request_opts are not valid JSON"),
        ("UPDATE conversations SET updated_at = ?", "yesterday", "updated_at is 'yesterday'"),
        ("UPDATE conversations SET version = ?", "three", "version is 'three'"),
    ],
)
async def test_a_damaged_row_is_reported_and_left_untouched(
    anyio_backend: str, tmp_path: Path, sql: str, value: str | None, problem: str
) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        await store.save("c-9", record("hi"), expected_version=None, lifecycle="queued")
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute(sql, (value,))
            before = conn.execute("SELECT * FROM conversations").fetchall()
            before_messages = conn.execute("SELECT * FROM messages").fetchall()

            with pytest.raises(CorruptStateError) as caught:
                await store.load("c-9")

            assert conn.execute("SELECT * FROM conversations").fetchall() == before
            assert conn.execute("SELECT * FROM messages").fetchall() == before_messages
        finally:
            conn.close()

    assert "'c-9'" in str(caught.value)
    assert problem in str(caught.value)


_RACER = textwrap.dedent(
    """
    import json, sys, time
    import anyio
    from sessionvisor._errors import StaleWriteError
    from sessionvisor.state import SQLiteStore, StoredConversation

    async def main(path, start, seconds):
        wins, lost = [], 0
        async with SQLiteStore(path) as store:
            await anyio.sleep(max(0.0, start - time.time()))
            deadline = start + seconds
            while time.time() < deadline:
                current = await store.load("c-shared")
                try:
                    wins.append(await store.save(
                        "c-shared",
                        StoredConversation(state=current.state),
                        expected_version=current.version,
                        lifecycle="completion",
                    ))
                except StaleWriteError:
                    lost += 1
        print(json.dumps({"wins": wins, "lost": lost}))

    anyio.run(main, sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))
    """
)


@pytest.mark.slow
async def test_two_processes_writing_one_file_never_both_win_a_version(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with SQLiteStore(path) as store:
        await store.save("c-shared", record("0"), expected_version=None, lifecycle="queued")
    # Both processes start writing at the same wall-clock moment, after
    # their (slow) imports are done.
    start = time.time() + 2.0
    results: list[dict[str, object]] = []

    async def racer() -> None:
        done = await anyio.run_process(
            [sys.executable, "-c", _RACER, str(path), str(start), "0.7"], check=True
        )
        results.append(json.loads(done.stdout))

    async with anyio.create_task_group() as tg:
        tg.start_soon(racer)
        tg.start_soon(racer)

    async with SQLiteStore(path) as store:
        final = await store.load("c-shared")
    assert final is not None
    wins = [v for result in results for v in result["wins"]]  # type: ignore[attr-defined]
    # Both processes won some versions and lost some: they really overlapped.
    assert all(result["wins"] for result in results), results
    assert sum(result["lost"] for result in results) > 0, results  # type: ignore[misc]
    # Each version from 2 to the last was won exactly once, across processes.
    assert sorted(wins) == list(range(2, final.version + 1))


async def test_synchronous_is_applied_and_checked(anyio_backend: str, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "sync.db", synchronous="normal")
    async with store:
        await store.save(
            "c-1",
            StoredConversation(state=dump_state(State())),
            expected_version=None,
            lifecycle="queued",
        )
        assert await sqlite_synchronous(store) == "NORMAL"
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(tmp_path / "x.db", synchronous="OFF")
    assert (
        sqlite3.connect(tmp_path / "sync.db")
        .execute("select count(*) from conversations")
        .fetchone()[0]
        == 1
    )


async def test_a_closed_store_raises_store_closed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.aclose()

    with pytest.raises(StoreClosed, match="closed"):
        await store.unanswered()


async def test_unanswered_reads_the_partial_index(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        await store.save("c-1", record("hi"), expected_version=None, lifecycle="queued")

    conn = sqlite3.connect(path)
    try:
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM conversations WHERE unanswered = 1 LIMIT -1"
            )
        )
    finally:
        conn.close()
    assert "conversations_unanswered" in plan
