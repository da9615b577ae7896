"""GroupCommit on its own: batches, outcomes, and a flush that forgets a write."""

from __future__ import annotations

import anyio
import pytest

from sessionvisor.state._batch import GroupCommit, Write

pytestmark = pytest.mark.anyio


def never_closed() -> None:
    return None


async def test_every_write_gets_its_own_outcome_and_a_forgotten_one_fails(
    anyio_backend: str,
) -> None:
    batches: list[list[str]] = []

    def flush(batch: list[Write]) -> None:
        batches.append([w.conversation_id for w in batch])
        for write in batch:
            if write.conversation_id == "bad":
                write.fail(ValueError("bad row"))
            elif write.conversation_id != "forgotten":
                write.succeed(7)

    limiter = anyio.CapacityLimiter(1)
    commits = GroupCommit(flush, limiter, never_closed)
    outcomes: dict[str, object] = {}

    async def save(cid: str) -> None:
        try:
            outcomes[cid] = await commits.submit(Write(cid, None, None, "queued"))
        except Exception as exc:
            outcomes[cid] = exc

    async with anyio.create_task_group() as tg, limiter:
        for cid in ("ok", "bad", "forgotten"):
            tg.start_soon(save, cid)
        await anyio.wait_all_tasks_blocked()

    assert [sorted(batch) for batch in batches] == [["bad", "forgotten", "ok"]]
    assert outcomes["ok"] == 7
    assert isinstance(outcomes["bad"], ValueError)
    assert isinstance(outcomes["forgotten"], RuntimeError)
    assert "no outcome" in str(outcomes["forgotten"])


async def test_a_flush_that_raises_fails_the_writes_it_did_not_settle(anyio_backend: str) -> None:
    def flush(batch: list[Write]) -> None:
        next(w for w in batch if w.conversation_id == "first").succeed(1)
        raise OSError("disk gone")

    limiter = anyio.CapacityLimiter(1)
    commits = GroupCommit(flush, limiter, never_closed)
    outcomes: dict[str, object] = {}

    async def save(cid: str) -> None:
        try:
            outcomes[cid] = await commits.submit(Write(cid, None, None, "queued"))
        except Exception as exc:
            outcomes[cid] = exc

    async with anyio.create_task_group() as tg, limiter:
        tg.start_soon(save, "first")
        tg.start_soon(save, "second")
        await anyio.wait_all_tasks_blocked()

    assert outcomes["first"] == 1
    assert isinstance(outcomes["second"], OSError)
