"""What only MemoryStore promises beyond the shared contract."""

from __future__ import annotations

import pytest

from sessionvisor.state import MemoryStore, Message, State, StoredConversation, dump_state
from sessionvisor.testing import raw_record

pytestmark = pytest.mark.anyio


def record(text: str) -> StoredConversation:
    return StoredConversation(
        state=dump_state(State(messages=[Message(role="user", content=text)]))
    )


async def test_memory_store_keeps_its_own_compact_copy(anyio_backend: str) -> None:
    store = MemoryStore()
    saved = record("hi")

    await store.save("c-1", saved, expected_version=None, lifecycle="queued")
    # What the caller does to its dict afterwards does not reach the store.
    saved.state["messages"].clear()
    loaded = await store.load("c-1")

    assert loaded is not None
    assert [m["content"] for m in loaded.state["messages"]] == ["hi"]
    raw = raw_record(store, "c-1")
    assert raw is not None
    assert isinstance(raw[1], bytes)
    assert store.ids() == ["c-1"]


async def test_memory_store_shows_quarantined_records(anyio_backend: str) -> None:
    store = MemoryStore()
    saved = record("hi")
    await store.save("c-1", saved, expected_version=None, lifecycle="queued")

    key = await store.quarantine("c-1")

    assert list(store.quarantined) == [key]
    assert store.quarantined[key].state == saved.state
    assert store.ids() == []


async def test_a_save_that_extends_the_history_keeps_every_message(anyio_backend: str) -> None:
    store = MemoryStore()

    class History(list):  # what the runtime's encoder hands over: append-only, weakly held
        __slots__ = ("__weakref__",)

    messages = History([{"role": "user", "content": "one"}])
    state = {"messages": messages, "queued": [], "metadata": {}, "interrupt": None, "version": 1}
    version = await store.save(
        "c-1", StoredConversation(state=state), expected_version=None, lifecycle="turn_start"
    )
    # The runtime appends to the same list and saves again: only the tail is new.
    messages.append({"role": "assistant", "content": "two"})
    state = {**state, "metadata": {"k": 1}}
    version = await store.save(
        "c-1", StoredConversation(state=state), expected_version=version, lifecycle="completion"
    )
    # A rewritten history (other dicts) replaces the stored one instead of extending it.
    rewritten = [{"role": "system", "content": "summary"}]
    loaded = await store.load("c-1")
    assert loaded is not None
    assert [m["content"] for m in loaded.state["messages"]] == ["one", "two"]
    assert loaded.state["metadata"] == {"k": 1}

    await store.save(
        "c-1",
        StoredConversation(state={**state, "messages": rewritten}),
        expected_version=version,
        lifecycle="completion",
    )
    loaded = await store.load("c-1")
    assert loaded is not None
    assert [m["content"] for m in loaded.state["messages"]] == ["summary"]
