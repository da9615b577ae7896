"""``sessionvisor.testing``'s helpers for tests of the stores themselves."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from sessionvisor._errors import CorruptStateError
from sessionvisor.state import (
    MemoryStore,
    Message,
    SQLiteStore,
    State,
    StoredConversation,
    dump_state,
)
from sessionvisor.testing import (
    hold_commits,
    overwrite_stored_state,
    raw_quarantined_record,
    raw_record,
    record_commit_batches,
    sqlite_synchronous,
)

pytestmark = pytest.mark.anyio


def record(text: str) -> StoredConversation:
    return StoredConversation(
        state=dump_state(State(messages=[Message(role="user", content=text)])), owner="o-1"
    )


async def test_raw_record_is_the_header_and_the_bytes_held(anyio_backend: str) -> None:
    store = MemoryStore()
    assert raw_record(store, "c-1") is None
    await store.save("c-1", record("hi"), expected_version=None, lifecycle="queued")

    raw = raw_record(store, "c-1")

    assert raw is not None
    header, blob = raw
    assert (header.state, header.version, header.owner, header.lifecycle) == (
        {},
        1,
        "o-1",
        "queued",
    )
    assert json.loads(blob)["messages"][0]["content"] == "hi"


async def test_raw_quarantined_record_finds_the_quarantined_bytes(anyio_backend: str) -> None:
    store = MemoryStore()
    await store.save("c-1", record("hi"), expected_version=None, lifecycle="queued")
    before = raw_record(store, "c-1")

    key = await store.quarantine("c-1")

    assert raw_record(store, "c-1") is None
    assert raw_quarantined_record(store, key) == before
    assert raw_quarantined_record(store, "c-1#quarantine-99") is None


async def test_an_overwritten_state_is_kept_as_given_and_fails_to_load(
    anyio_backend: str,
) -> None:
    store = MemoryStore()
    await store.save("c-1", record("hi"), expected_version=None, lifecycle="queued")

    overwrite_stored_state(store, "c-1", b'{"messages": [')

    raw = raw_record(store, "c-1")
    assert raw is not None
    assert raw[1] == b'{"messages": ['
    assert raw[0].version == 1
    with pytest.raises(CorruptStateError):
        await store.load("c-1")
    with pytest.raises(LookupError, match="c-2"):
        overwrite_stored_state(store, "c-2", b"{}")


async def test_sqlite_synchronous_reads_the_setting_in_effect(
    anyio_backend: str, tmp_path: Path
) -> None:
    async with SQLiteStore(tmp_path / "full.db") as full:
        assert await sqlite_synchronous(full) == "FULL"
    async with SQLiteStore(tmp_path / "extra.db", synchronous="extra") as extra:
        assert await sqlite_synchronous(extra) == "EXTRA"


async def test_held_commits_queue_saves_into_one_recorded_batch(
    anyio_backend: str, tmp_path: Path
) -> None:
    async with SQLiteStore(tmp_path / "held.db") as store:
        batches = record_commit_batches(store)
        saved: list[str] = []

        async def save(cid: str) -> None:
            await store.save(cid, record(cid), expected_version=None, lifecycle="queued")
            saved.append(cid)

        async with anyio.create_task_group() as tg, hold_commits(store):
            for cid in ("c-1", "c-2", "c-3"):
                tg.start_soon(save, cid)
            await anyio.wait_all_tasks_blocked()
            assert saved == []

        assert sorted(saved) == ["c-1", "c-2", "c-3"]
        assert [sorted(batch) for batch in batches] == [["c-1", "c-2", "c-3"]]


async def test_each_helper_refuses_a_store_it_does_not_support(
    anyio_backend: str, tmp_path: Path
) -> None:
    memory, sqlite = MemoryStore(), SQLiteStore(tmp_path / "x.db")
    with pytest.raises(TypeError, match="raw_record supports a MemoryStore only, got SQLiteStore"):
        raw_record(sqlite, "c-1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"raw_quarantined_record .* got SQLiteStore"):
        raw_quarantined_record(sqlite, "c-1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"overwrite_stored_state .* got SQLiteStore"):
        overwrite_stored_state(sqlite, "c-1", b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"sqlite_synchronous .* got MemoryStore"):
        await sqlite_synchronous(memory)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"hold_commits .* PostgresStore only, got MemoryStore"):
        async with hold_commits(memory):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError, match=r"record_commit_batches .* got MemoryStore"):
        record_commit_batches(memory)  # type: ignore[arg-type]
    await sqlite.aclose()
