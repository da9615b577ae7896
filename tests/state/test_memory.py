"""What only MemoryStore promises beyond the shared contract."""

from __future__ import annotations

import pytest

from sessionvisor.state import MemoryStore, Message, State, StoredConversation, dump_state

pytestmark = pytest.mark.anyio


def record(text: str) -> StoredConversation:
    return StoredConversation(
        state=dump_state(State(messages=[Message(role="user", content=text)]))
    )


async def test_memory_store_keeps_the_record_without_copying(anyio_backend: str) -> None:
    store = MemoryStore()
    saved = record("hi")

    await store.save("c-1", saved, expected_version=None, lifecycle="queued")
    loaded = await store.load("c-1")

    assert loaded is not None
    # The history is shared, not copied: only the top-level dict is new.
    assert loaded.state == saved.state
    assert loaded.state["messages"] is saved.state["messages"]
    assert store.ids() == ["c-1"]


async def test_memory_store_shows_quarantined_records(anyio_backend: str) -> None:
    store = MemoryStore()
    saved = record("hi")
    await store.save("c-1", saved, expected_version=None, lifecycle="queued")

    key = await store.quarantine("c-1")

    assert list(store.quarantined) == [key]
    assert store.quarantined[key].state is saved.state
    assert store.ids() == []
