"""A supervisor that starts answers the work a crashed process left in the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from sessionvisor import (
    MemoryStore,
    MessageAppended,
    Restarted,
    SessionFailed,
    SessionSupervisor,
    SingleRouter,
    SQLiteStore,
    Status,
    StoredConversation,
)
from sessionvisor.state import Message, State, dump_state
from sessionvisor.testing import ScriptedAgent, collect_until, wait_until

pytestmark = pytest.mark.anyio

WAIT = 10


def _router(agent: ScriptedAgent) -> SingleRouter:
    return SingleRouter(lambda agent_id, config: agent)


async def _leave(
    store: Any, cid: str, state: State, lifecycle: Any, owner: str | None = None
) -> None:
    """Write what a process that died would have left behind."""
    record = StoredConversation(state=dump_state(state), owner=owner, route_key=None)
    await store.save(cid, record, expected_version=None, lifecycle=lifecycle)


def _texts(state: State) -> list[str]:
    return [m.text() for m in state.messages]


async def _answered(store: Any, cid: str, text: str) -> State:
    async def done() -> bool:
        stored = await store.load(cid)
        return stored is not None and f"echo: {text}" in _texts(State.model_validate(stored.state))

    with anyio.fail_after(WAIT):
        await wait_until(done)
    stored = await store.load(cid)
    assert stored is not None
    return State.model_validate(stored.state)


async def test_a_turn_cut_by_a_crash_and_its_queue_are_answered_without_a_request(
    anyio_backend: str, tmp_path: Path
) -> None:
    async with SQLiteStore(tmp_path / "chat.db") as store:
        mid_turn = State(
            messages=[Message(role="user", content="first")],
            queued=[Message(role="user", content="second"), Message(role="user", content="third")],
        )
        await _leave(store, "c-1", mid_turn, "turn_start", owner="alice")
        agent = ScriptedAgent()
        async with SessionSupervisor(_router(agent), store=store):
            state = await _answered(store, "c-1", "second\nthird")
        # The interrupted turn ran again, then one turn answered both queued messages.
        assert agent.turns == ["first", "second\nthird"]
        assert _texts(state) == ["first", "echo: first", "second", "third", "echo: second\nthird"]
        assert state.queued == []
        record = await store.load("c-1")
        assert record is not None and record.owner == "alice"  # the owner is kept


async def test_a_queue_left_by_a_stop_mid_turn_is_answered(
    anyio_backend: str, tmp_path: Path
) -> None:
    async with SQLiteStore(tmp_path / "chat.db") as store:
        left = State(
            messages=[Message(role="user", content="a"), Message(role="assistant", content="b")],
            queued=[Message(role="user", content="waiting")],
        )
        await _leave(store, "c-2", left, "queued")
        agent = ScriptedAgent()
        async with SessionSupervisor(_router(agent), store=store):
            await _answered(store, "c-2", "waiting")
        assert agent.turns == ["waiting"]


async def test_a_queue_behind_a_turn_that_completed_is_answered_after_a_crash(
    anyio_backend: str, tmp_path: Path
) -> None:
    # The process died between the save of a completed turn and the start of the
    # next one: the messages queued behind are work, not held.
    async with SQLiteStore(tmp_path / "chat.db") as store:
        left = State(
            messages=[Message(role="user", content="a"), Message(role="assistant", content="b")],
            queued=[Message(role="user", content="behind")],
        )
        await _leave(store, "c-3", left, "completion")
        assert await store.unanswered() == ["c-3"]
        agent = ScriptedAgent()
        async with SessionSupervisor(_router(agent), store=store):
            state = await _answered(store, "c-3", "behind")
        assert agent.turns == ["behind"]
        assert state.queued == []


async def test_finished_and_held_conversations_are_left_alone(
    anyio_backend: str, tmp_path: Path
) -> None:
    async with SQLiteStore(tmp_path / "chat.db") as store:
        done = State(
            messages=[Message(role="user", content="x"), Message(role="assistant", content="y")]
        )
        await _leave(store, "finished", done, "completion")
        held = State(
            messages=[Message(role="user", content="x")],
            queued=[Message(role="user", content="after the error")],
        )
        await _leave(store, "held", held, "error")
        await _leave(
            store, "pending", State(messages=[Message(role="user", content="go")]), "turn_start"
        )
        agent = ScriptedAgent()
        async with SessionSupervisor(_router(agent), store=store) as sup:
            await _answered(store, "pending", "go")
            # Recovery woke exactly one conversation: the one with unanswered work.
            # ("held" has queued messages, but they wait for the user, as before the
            # crash: the index does not list it.)
            assert agent.turns == ["go"]
            assert await sup.status("finished") is Status.NOT_RUNNING
        stored = await store.load("held")
        assert stored is not None and stored.state["queued"]


async def test_recover_false_leaves_the_work_for_the_next_request(anyio_backend: str) -> None:
    # A memory store answers without a worker thread, so once every task is blocked a
    # recovery (were it on) would already have woken the conversation.
    store = MemoryStore()
    await _leave(store, "c-1", State(messages=[Message(role="user", content="hi")]), "turn_start")
    agent = ScriptedAgent()
    async with SessionSupervisor(_router(agent), store=store, recover=False) as sup:
        await anyio.wait_all_tasks_blocked()
        assert await sup.status("c-1") is Status.NOT_RUNNING
        assert agent.turns == []
        assert (await sup.start("c-1")).started  # the next request does it
        await _answered(store, "c-1", "hi")


async def test_recovery_wakes_from_a_memory_store_too(anyio_backend: str) -> None:
    store = MemoryStore()
    await _leave(store, "c-1", State(messages=[Message(role="user", content="hi")]), "turn_start")
    agent = ScriptedAgent()
    async with SessionSupervisor(_router(agent), store=store):
        await _answered(store, "c-1", "hi")
    assert agent.turns == ["hi"]


async def test_restarts_during_start_reach_early_subscribers(anyio_backend: str) -> None:
    agent = ScriptedAgent(crash_on_start=2)
    opts = {"max_restarts": 3}
    async with (
        SessionSupervisor(_router(agent), supervisor_opts=opts) as sup,
        sup.subscribe("c-1") as events,
    ):
        await sup.start("c-1")
        seen = await collect_until(
            events,
            lambda e: isinstance(e, MessageAppended) or getattr(e, "status", None) is Status.IDLE,
        )
    restarts = [e for e in seen if isinstance(e, Restarted)]
    assert [r.attempt for r in restarts] == [1, 2]
    assert not any(isinstance(e, SessionFailed) for e in seen)


async def test_a_start_that_gives_up_tells_early_subscribers_each_restart_first(
    anyio_backend: str,
) -> None:
    agent = ScriptedAgent(crash_on_start=10)
    opts = {"max_restarts": 2}
    async with (
        SessionSupervisor(_router(agent), supervisor_opts=opts) as sup,
        sup.subscribe("c-1") as events,
    ):
        with pytest.raises(Exception, match="could not start"):
            await sup.start("c-1")
        seen = await collect_until(events, lambda e: isinstance(e, SessionFailed))
    kinds = [type(e).__name__ for e in seen[1:]]  # after the not_running snapshot
    assert kinds == ["Restarted", "Restarted", "SessionFailed"]


class _ToolAgent:
    """Runs a pretend tool for a message that asks for one (its result joins the
    history before the reply), then waits at ``gate`` when one is given."""

    def __init__(self, gate: anyio.Event | None = None) -> None:
        self.gate = gate
        self.running = anyio.Event()
        self.tool_runs = 0

    async def run(self, turn: Any) -> Any:
        from sessionvisor import Done

        last = [m for m in turn.state.messages if m.role == "user"][-1].text()
        if "tool" in last:
            self.tool_runs += 1
            turn.state.messages.append(Message(role="tool", content="the tool ran"))
            turn.state.metadata["tool_runs"] = turn.state.metadata.get("tool_runs", 0) + 1
        self.running.set()
        if self.gate is not None:
            await self.gate.wait()
        return Done(turn.state, reply=f"echo: {last}")


async def test_a_save_made_while_a_turn_runs_holds_no_partial_work_so_a_rerun_runs_it_once(
    anyio_backend: str,
) -> None:
    store = MemoryStore()
    blocked = _ToolAgent(gate=anyio.Event())
    async with SessionSupervisor(SingleRouter(lambda a, c: blocked), store=store) as sup:
        await sup.send("c-1", "run the tool")
        with anyio.fail_after(WAIT):
            await blocked.running.wait()  # the tool ran; the turn is not over
        await sup.send("c-1", "and then this")  # queued: saved while the turn runs
        left = await store.load("c-1")
        assert left is not None and left.lifecycle == "turn_start"
        # What a process killed now leaves: the turn's start, not its tool result.
        state = State.model_validate(left.state)
        assert [(m.role, m.text()) for m in state.messages] == [("user", "run the tool")]
        assert [m.text() for m in state.queued] == ["and then this"]
        assert "tool_runs" not in state.metadata
        assert blocked.gate is not None
        blocked.gate.set()  # this session ends normally; the record above is the crash's

    # A new process starts from that record: the turn runs again, the tool once.
    rerun = _ToolAgent()
    fresh = MemoryStore()
    await fresh.save("c-1", left, expected_version=None, lifecycle="turn_start")
    async with SessionSupervisor(SingleRouter(lambda a, c: rerun), store=fresh):
        answered = await _answered(fresh, "c-1", "and then this")
    tools = [m for m in answered.messages if m.role == "tool"]
    assert len(tools) == 1 and rerun.tool_runs == 1
    assert answered.metadata["tool_runs"] == 1
