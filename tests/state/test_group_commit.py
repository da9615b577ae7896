"""Group commit in the SQL stores: saves queued while a commit is in flight share
the next transaction, and each still gets its own outcome."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from sessionvisor._errors import StaleWriteError
from sessionvisor.state import Message, State, StoredConversation, dump_state
from sessionvisor.testing import hold_commits, record_commit_batches

from ._backends import Backend

pytestmark = pytest.mark.anyio


def record(text: str, **state: Any) -> StoredConversation:
    return StoredConversation(
        state={**dump_state(State(messages=[Message(role="user", content=text)])), **state}
    )


def sql_store(backend: Backend) -> None:
    if backend.kind == "memory":
        pytest.skip("MemoryStore has no commits to group")


async def test_saves_queued_during_a_commit_share_one_transaction(backend: Backend) -> None:
    sql_store(backend)
    store = await backend.open()
    batches = record_commit_batches(store)
    versions: dict[str, int] = {}

    async def save(cid: str) -> None:
        versions[cid] = await store.save(
            cid, record(cid), expected_version=None, lifecycle="turn_start"
        )

    ids = [f"c-{i:03d}" for i in range(100)]
    async with anyio.create_task_group() as tg, hold_commits(store):
        for cid in ids:
            tg.start_soon(save, cid)
        await anyio.wait_all_tasks_blocked()
        assert versions == {}  # nothing returns before its commit

    assert versions == dict.fromkeys(ids, 1)
    assert [sorted(batch) for batch in batches] == [ids]
    for cid in ids[::17]:
        loaded = await store.load(cid)
        assert loaded is not None
        assert loaded.state["messages"][0]["content"] == cid
    assert sorted(await store.unanswered()) == ids


async def test_a_stale_or_bad_write_fails_alone_in_its_batch(backend: Backend) -> None:
    sql_store(backend)
    store = await backend.open()
    await store.save("c-old", record("v1"), expected_version=None, lifecycle="completion")
    batches = record_commit_batches(store)
    outcomes: dict[str, Any] = {}

    async def save(cid: str, rec: StoredConversation, expected: int | None) -> None:
        try:
            outcomes[cid] = await store.save(
                cid, rec, expected_version=expected, lifecycle="completion"
            )
        except Exception as exc:
            outcomes[cid] = exc

    async with anyio.create_task_group() as tg, hold_commits(store):
        tg.start_soon(save, "c-a", record("a"), None)
        tg.start_soon(save, "c-old", record("stale"), 7)
        tg.start_soon(save, "c-bad", record("x", metadata={"obj": object()}), None)
        tg.start_soon(save, "c-b", record("b"), None)
        await anyio.wait_all_tasks_blocked()

    assert len(batches) == 1
    assert sorted(batches[0]) == ["c-a", "c-b", "c-bad", "c-old"]
    assert outcomes["c-a"] == 1
    assert outcomes["c-b"] == 1
    assert isinstance(outcomes["c-old"], StaleWriteError)
    assert "expected stored version 7 but it is 1" in str(outcomes["c-old"])
    assert isinstance(outcomes["c-bad"], TypeError)
    assert await store.load("c-bad") is None
    old = await store.load("c-old")
    assert old is not None
    assert (old.version, old.state["messages"][0]["content"]) == (1, "v1")


async def test_a_save_cancelled_before_its_commit_writes_nothing(backend: Backend) -> None:
    sql_store(backend)
    store = await backend.open()
    saved: list[str] = []

    async def save(cid: str) -> None:
        await store.save(cid, record(cid), expected_version=None, lifecycle="queued")
        saved.append(cid)

    async with anyio.create_task_group() as tg, hold_commits(store):
        with anyio.CancelScope() as doomed:
            tg.start_soon(save, "c-keep")
            async with anyio.create_task_group() as inner:
                inner.start_soon(save, "c-drop")
                await anyio.wait_all_tasks_blocked()
                doomed.cancel()

    assert saved == ["c-keep"]
    assert await store.load("c-drop") is None
    assert await store.load("c-keep") is not None


async def test_saves_from_many_tasks_keep_each_conversations_order(backend: Backend) -> None:
    sql_store(backend)
    store = await backend.open()

    async def converse(cid: str) -> None:
        history: list[dict[str, Any]] = []
        version = None
        for turn in range(8):
            history.append(Message(role="user", content=f"{cid}:{turn}").model_dump(mode="json"))
            state = {**dump_state(State()), "messages": list(history)}
            version = await store.save(
                cid,
                StoredConversation(state=state),
                expected_version=version,
                lifecycle="completion",
            )

    ids = [f"c-{i}" for i in range(40)]
    async with anyio.create_task_group() as tg:
        for cid in ids:
            tg.start_soon(converse, cid)

    for cid in ids:
        loaded = await store.load(cid)
        assert loaded is not None
        assert loaded.version == 8
        assert [m["content"] for m in loaded.state["messages"]] == [f"{cid}:{t}" for t in range(8)]
