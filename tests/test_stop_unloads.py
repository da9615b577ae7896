"""``stop`` unloads a session, ``cancel`` aborts its turn (one process, SQLite, asyncio and trio).

A turn running when ``stop`` is called is saved as unanswered work: the next
start answers its message, whether that start is an explicit ``start`` in the
same supervisor or a new supervisor on the same file (as after a restart),
whose recovery finds the work in the store. A turn ended by ``cancel`` is
rolled back, its queue is held, and no start runs it again: only the user's
next message moves the conversation on.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from sessionvisor import (
    Done,
    FunctionAgent,
    Interrupt,
    SessionSupervisor,
    SingleRouter,
    SQLiteStore,
    State,
    Status,
)
from sessionvisor.agents import Outcome, Turn
from sessionvisor.testing import ScriptedAgent, wait_for_status, wait_until

pytestmark = pytest.mark.anyio

WAIT = 10.0


def _router(agent: ScriptedAgent) -> SingleRouter:
    return SingleRouter(lambda agent_id, config: agent)


async def _stored(store: SQLiteStore, cid: str) -> State:
    record = await store.load(cid)
    assert record is not None
    return State.model_validate(record.state)


def _texts(state: State) -> list[str]:
    return [m.text() for m in state.messages]


async def _replied(store: SQLiteStore, cid: str, reply: str) -> State:
    async def there() -> bool:
        return reply in _texts(await _stored(store, cid))

    await wait_until(there, timeout=WAIT, interval=0.01, message=f"{reply!r} stored for {cid}")
    return await _stored(store, cid)


async def _running_slow_turn(sup: SessionSupervisor, agent: ScriptedAgent, cid: str) -> None:
    """Send "slow one" and return while its turn runs (held by the agent's gate)."""
    await sup.send(cid, "slow one")
    with anyio.fail_after(WAIT):
        await agent.started_slow.wait()
    assert await sup.status(cid) is Status.RUNNING


@pytest.mark.parametrize("again", ["start", "new supervisor"])
async def test_a_turn_running_at_a_stop_is_answered_on_the_next_start(
    anyio_backend: str, tmp_path: Path, again: str
) -> None:
    agent = ScriptedAgent()
    async with SQLiteStore(tmp_path / "chat.db") as store:
        async with SessionSupervisor(_router(agent), store=store) as sup:
            await _running_slow_turn(sup, agent, "c-1")
            assert await sup.stop("c-1") == "stopped"
            assert await sup.status("c-1") is Status.NOT_RUNNING

            # Unloaded, not aborted: the message waits in the store as unanswered work.
            stopped = await _stored(store, "c-1")
            assert _texts(stopped) == []
            assert [m.text() for m in stopped.queued] == ["slow one"]
            assert "c-1" in await store.unanswered()
            agent.release()  # the next run of the turn finishes

            if again == "start":
                await sup.start("c-1")
                state = await _replied(store, "c-1", "echo: slow one")
        if again == "new supervisor":
            # A new supervisor on the same file answers it without any request.
            async with SessionSupervisor(_router(agent), store=store):
                state = await _replied(store, "c-1", "echo: slow one")
        assert await store.unanswered() == []
    assert _texts(state) == ["slow one", "echo: slow one"]
    assert state.queued == []
    assert agent.turns == ["slow one", "slow one"]  # cut by the stop, then run again


@pytest.mark.parametrize("again", ["start", "new supervisor"])
async def test_a_cancelled_turn_is_not_run_again_by_a_start_and_its_queue_stays_held(
    anyio_backend: str, tmp_path: Path, again: str
) -> None:
    agent = ScriptedAgent()
    async with SQLiteStore(tmp_path / "chat.db") as store:
        async with SessionSupervisor(_router(agent), store=store) as sup:
            await _running_slow_turn(sup, agent, "c-1")
            assert (await sup.send("c-1", "two")).queued
            assert await sup.cancel("c-1") is Status.CANCELLED
            assert await sup.stop("c-1") == "stopped"
            agent.release()

            cancelled = await _stored(store, "c-1")
            assert _texts(cancelled) == ["slow one"]  # the user's message stays, unanswered
            assert [m.text() for m in cancelled.queued] == ["two"]  # held

            if again == "start":
                await sup.start("c-1")
                # The next message lifts the hold: "two" and "next" run in one turn, and
                # the cancelled message is never answered on its own.
                await sup.send("c-1", "next")
                await wait_for_status(sup, "c-1", Status.IDLE, timeout=WAIT)
                state = await _replied(store, "c-1", "echo: slow one\ntwo\nnext")
        if again == "new supervisor":
            async with SessionSupervisor(_router(agent), store=store) as sup:
                await sup.send("c-1", "next")
                state = await _replied(store, "c-1", "echo: slow one\ntwo\nnext")
    assert agent.turns == ["slow one", "slow one\ntwo\nnext"]
    assert _texts(state) == ["slow one", "two", "next", "echo: slow one\ntwo\nnext"]


class _SlowResume:
    """Asks "go?"; carrying out an answer waits for ``gate`` (the first time only)."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.answers: list[object] = []

    async def run(self, turn: Turn) -> Outcome:
        return Interrupt(turn.state, {"question": "go?"})

    async def resume(self, turn: Turn, answer: object) -> Outcome:
        self.answers.append(answer)
        if len(self.answers) == 1:
            await self.gate.wait()
        return Done(turn.state, reply=f"resumed: {answer}")

    def router(self) -> SingleRouter:
        return SingleRouter(lambda agent_id, config: FunctionAgent(self.run, resume=self.resume))


async def test_an_answer_being_carried_out_at_a_stop_is_carried_out_on_the_next_start(
    anyio_backend: str, tmp_path: Path
) -> None:
    agent = _SlowResume()
    async with (
        SQLiteStore(tmp_path / "chat.db") as store,
        SessionSupervisor(agent.router(), store=store) as sup,
    ):
        await sup.send("c-1", "ask")
        await wait_for_status(sup, "c-1", Status.INTERRUPTED, timeout=WAIT)
        assert await sup.resume("c-1", "yes") is Status.RUNNING  # acknowledged: stored
        await wait_until(lambda: agent.answers, timeout=WAIT)
        assert await sup.stop("c-1") == "stopped"
        # Unanswered work, as for a message: a recovery (or a cluster's sweeper) finds it.
        assert "c-1" in await store.unanswered()
        agent.gate.set()

        await sup.start("c-1")
        state = await _replied(store, "c-1", "resumed: yes")
    assert _texts(state) == ["ask", "resumed: yes"]
    assert agent.answers == ["yes", "yes"]
