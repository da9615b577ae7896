"""``drop_fired_timers`` on the three stores: the rows of fired timers removed
together, each only while it holds the scheduling that fired (by id), with an
answer per timer; on PostgreSQL also fenced by the conversation's epoch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sessionvisor.state import StoredTimer

pytestmark = pytest.mark.anyio
DUE = datetime(2030, 1, 1, tzinfo=UTC)


def timer(key: str, timer_id: str, seconds: float = 0) -> StoredTimer:
    return StoredTimer(key, DUE + timedelta(seconds=seconds), {"k": key}, timer_id)


async def test_fired_rows_go_together_and_a_replaced_one_stays(store: Any) -> None:
    await store.put_timer("a", timer("x", "a-x-1"))
    await store.put_timer("a", timer("y", "a-y-1", 1))
    await store.put_timer("b", timer("x", "b-x-1", 2))
    await store.put_timer("b", timer("x", "b-x-2", 3))  # replaced: a new scheduling
    await store.put_timer("c", timer("z", "c-z-1", 4))
    fired = [("a", "x", "a-x-1"), ("a", "y", "a-y-1"), ("b", "x", "b-x-1"), ("d", "q", "d")]
    assert await store.drop_fired_timers(fired) == [True, True, False, False]
    assert [t.key for t in await store.list_timers("a")] == []
    assert [t.id for t in await store.list_timers("b")] == ["b-x-2"]
    assert [cid for cid, _ in await store.due_timers(DUE + timedelta(days=1), 10)] == ["b", "c"]
    # Removed once: asking again removes nothing.
    assert await store.drop_fired_timers(fired[:2]) == [False, False]
    assert await store.drop_fired_timers([]) == []


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_postgres_removes_a_fired_row_only_under_a_current_epoch(store: Any) -> None:
    await store.fence("a", 5)
    await store.fence("b", 5)
    await store.put_timer("a", timer("x", "a-x"))
    await store.put_timer("b", timer("x", "b-x"))
    await store.put_timer("c", timer("x", "c-x"))
    fired = [("a", "x", "a-x"), ("b", "x", "b-x"), ("c", "x", "c-x")]
    # "a" was taken over (epoch 5 stored, 4 given): its row stays for the new owner.
    assert await store.drop_fired_timers(fired, epochs=[4, 5, 1]) == [False, True, True]
    assert [t.id for t in await store.list_timers("a")] == ["a-x"]
    assert await store.drop_fired_timers(fired[:1], epochs=[6]) == [True]
