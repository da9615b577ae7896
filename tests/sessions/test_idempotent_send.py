"""A send retried with the same client message id is applied once."""

from __future__ import annotations

import anyio
import pytest

from sessionvisor import SessionSupervisor, SingleRouter, Status
from sessionvisor.testing import ScriptedAgent, wait_for_status

pytestmark = pytest.mark.anyio


def _sup(agent: ScriptedAgent) -> SessionSupervisor:
    return SessionSupervisor(SingleRouter(lambda agent_id, config: agent))


async def test_a_retried_send_is_acknowledged_and_not_applied_again(anyio_backend: str) -> None:
    agent = ScriptedAgent()
    async with _sup(agent) as sup:
        first = await sup.send("c-1", "hello", message_id="m-1")
        await wait_for_status(sup, "c-1", Status.IDLE)
        again = await sup.send("c-1", "hello", message_id="m-1")
        await wait_for_status(sup, "c-1", Status.IDLE)
        assert (first.duplicate, again.duplicate) == (False, True)
        assert again.queued is False
        state = await sup.load("c-1")
        assert state is not None
        assert [m.text() for m in state.messages] == ["hello", "echo: hello"]
        assert state.messages[0].id == "m-1"
        assert agent.turns == ["hello"]


async def test_a_retry_of_a_queued_message_says_it_is_still_queued(anyio_backend: str) -> None:
    agent = ScriptedAgent()
    async with _sup(agent) as sup:
        await sup.send("c-1", "slow")
        with anyio.fail_after(5):
            await agent.started_slow.wait()
        assert (await sup.send("c-1", "next", message_id="m-2")).queued
        retry = await sup.send("c-1", "next", message_id="m-2")
        assert retry.queued and retry.duplicate
        agent.release()
        await wait_for_status(sup, "c-1", Status.IDLE)
        state = await sup.load("c-1")
        assert state is not None
        assert [m.text() for m in state.messages].count("next") == 1


async def test_a_retry_after_a_restart_of_the_process_is_not_applied_again(
    anyio_backend: str, tmp_path: object
) -> None:
    from pathlib import Path

    from sessionvisor import SQLiteStore

    path = Path(str(tmp_path)) / "chat.db"
    agent = ScriptedAgent()
    async with SQLiteStore(path) as store:
        async with SessionSupervisor(SingleRouter(lambda a, c: agent), store=store) as sup:
            await sup.send("c-1", "hi", message_id="m-1")
            await wait_for_status(sup, "c-1", Status.IDLE)
        async with SessionSupervisor(SingleRouter(lambda a, c: agent), store=store) as sup:
            assert (await sup.send("c-1", "hi", message_id="m-1")).duplicate
            state = await sup.load("c-1")
    assert state is not None and [m.text() for m in state.messages] == ["hi", "echo: hi"]


@pytest.mark.parametrize(
    ("message_id", "error", "match"),
    [
        ("", ValueError, "must not be empty"),
        ("x" * 129, ValueError, "129 characters"),
        ("a\nb", ValueError, "control character"),
        (42, TypeError, "must be a str or None"),
    ],
)
async def test_a_bad_message_id_is_refused_before_anything_happens(
    anyio_backend: str, message_id: object, error: type[Exception], match: str
) -> None:
    agent = ScriptedAgent()
    async with _sup(agent) as sup:
        with pytest.raises(error, match=match):
            await sup.send("c-1", "hi", message_id=message_id)  # type: ignore[arg-type]
        assert await sup.status("c-1") is Status.NOT_RUNNING
