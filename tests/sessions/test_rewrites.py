"""``regenerate``, ``edit`` and ``cancel(keep_partial=True)``: what the agent sees, what
``load`` shows, and what the store keeps (every message, the superseded ones hidden)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from sessionvisor import (
    AccessDenied,
    Done,
    InvalidStatus,
    MemoryStore,
    MessageTooLarge,
    SessionSupervisor,
    SingleRouter,
    SQLiteStore,
    StateStore,
    Status,
    Turn,
    UnknownMessage,
)
from sessionvisor.testing import ManualClock, wait_for_status

from ._support import WAIT, stored_state

pytestmark = pytest.mark.anyio


class Recorder:
    """Answers "answer <n> to <text>"; records the history each turn was shown.

    A message saying "slow" streams two pieces and then waits until cancelled
    (or, with ``release``, answers).
    """

    def __init__(self) -> None:
        self.seen: list[list[str]] = []
        self.turns = 0
        self.streaming = anyio.Event()
        self.gate = anyio.Event()

    async def run(self, turn: Turn) -> Any:
        self.turns += 1
        self.seen.append([f"{m.role}:{m.text()}" for m in turn.state.messages])
        last = [m for m in turn.state.messages if m.role == "user"][-1].text()
        if "slow" in last:
            turn.delta("partial ")
            turn.delta("answer")
            self.streaming.set()
            await self.gate.wait()
        return Done(turn.state, reply=f"answer {self.turns} to {last}")


def _sup(agent: Recorder, store: StateStore | None = None, **kwargs: Any) -> SessionSupervisor:
    return SessionSupervisor(
        SingleRouter(lambda agent_id, config: agent),
        store=store if store is not None else MemoryStore(),
        clock=ManualClock(),
        **kwargs,
    )


async def _answered(sup: SessionSupervisor, cid: str, content: Any, **kwargs: Any) -> None:
    await sup.send(cid, content, **kwargs)
    await wait_for_status(sup, cid, Status.IDLE, timeout=WAIT, scope=kwargs.get("scope"))


def _texts(messages: list[Any]) -> list[str]:
    return [f"{m.role}:{m.text()}" for m in messages]


async def _settled(sup: SessionSupervisor, cid: str, scope: Any = None) -> None:
    await anyio.wait_all_tasks_blocked()
    await wait_for_status(sup, cid, Status.IDLE, timeout=WAIT, scope=scope)


async def test_regenerate_answers_again_and_the_agent_never_sees_the_old_reply(
    anyio_backend: str,
) -> None:
    agent = Recorder()
    async with _sup(agent) as sup:
        await _answered(sup, "c-1", "hello")
        await _answered(sup, "c-1", "how are you")
        first = await sup.load("c-1")
        assert first is not None
        old_user, old_reply = first.messages[2], first.messages[3]

        asked = await sup.regenerate("c-1")
        await _settled(sup, "c-1")

        assert agent.seen[-1] == ["user:hello", "assistant:answer 1 to hello", "user:how are you"]
        state = await sup.load("c-1")
        assert state is not None
        assert _texts(state.messages) == [
            "user:hello",
            "assistant:answer 1 to hello",
            "user:how are you",
            "assistant:answer 3 to how are you",
        ]
        again = state.messages[2]
        assert again.id == asked != old_user.id  # a new message, so a new turn
        assert again.metadata["regenerates"] == old_user.id
        assert set(state.superseded) == {old_user.id, old_reply.id}

        # The store keeps every message, in the order they came; the old ones are marked.
        stored = await stored_state(sup.store, "c-1")
        assert _texts(stored.messages) == [
            "user:hello",
            "assistant:answer 1 to hello",
            "user:how are you",
            "assistant:answer 2 to how are you",
            "user:how are you",
            "assistant:answer 3 to how are you",
        ]
        assert set(stored.superseded) == {old_user.id, old_reply.id}

        # The next turn does not see them either.
        await _answered(sup, "c-1", "bye")
        assert "assistant:answer 2 to how are you" not in agent.seen[-1]
        assert len(agent.seen[-1]) == 5


async def test_regenerate_of_an_earlier_message_supersedes_everything_after_it(
    anyio_backend: str,
) -> None:
    agent = Recorder()
    async with _sup(agent) as sup:
        await _answered(sup, "c-1", "one")
        await _answered(sup, "c-1", "two")
        state = await sup.load("c-1")
        assert state is not None
        await sup.regenerate("c-1", message_id=state.messages[0].id)
        await _settled(sup, "c-1")
        assert agent.seen[-1] == ["user:one"]
        shown = await sup.load("c-1")
        assert shown is not None
        assert _texts(shown.messages) == ["user:one", "assistant:answer 3 to one"]
        # The old id still names the message: it leads to the one that replaced it.
        await sup.regenerate("c-1", message_id=state.messages[0].id)
        await _settled(sup, "c-1")
        shown = await sup.load("c-1")
        assert shown is not None
        assert _texts(shown.messages) == ["user:one", "assistant:answer 4 to one"]


async def test_edit_changes_the_message_and_the_agent_sees_only_the_new_text(
    anyio_backend: str,
) -> None:
    agent = Recorder()
    async with _sup(agent) as sup:
        await _answered(sup, "c-1", "hello")
        await _answered(sup, "c-1", "what is 2+2")
        before = await sup.load("c-1")
        assert before is not None
        old = before.messages[2]

        new_id = await sup.edit("c-1", old.id, "what is 3+3")
        await _settled(sup, "c-1")

        assert agent.seen[-1] == ["user:hello", "assistant:answer 1 to hello", "user:what is 3+3"]
        state = await sup.load("c-1")
        assert state is not None
        assert _texts(state.messages)[2:] == [
            "user:what is 3+3",
            "assistant:answer 3 to what is 3+3",
        ]
        assert state.messages[2].id == new_id
        assert state.messages[2].metadata == {"edits": old.id}
        stored = await stored_state(sup.store, "c-1")
        assert "user:what is 2+2" in _texts(stored.messages)  # kept, hidden
        assert old.id in stored.superseded


async def test_edit_content_is_checked_like_a_send(anyio_backend: str) -> None:
    agent = Recorder()
    async with _sup(agent, supervisor_opts={"max_message_bytes": 64}) as sup:
        await _answered(sup, "c-1", "hello")
        state = await sup.load("c-1")
        assert state is not None
        mid = state.messages[0].id
        with pytest.raises(MessageTooLarge):
            await sup.edit("c-1", mid, "x" * 100)
        with pytest.raises(TypeError, match="content"):
            await sup.edit("c-1", mid, 42)
        with pytest.raises(TypeError, match="content"):
            await sup.edit("c-1", mid, [{"type": "text", "text": {1, 2}}])
        assert agent.turns == 1


async def test_both_are_refused_while_a_turn_runs(anyio_backend: str) -> None:
    agent = Recorder()
    async with _sup(agent) as sup:
        await _answered(sup, "c-1", "hello")
        state = await sup.load("c-1")
        assert state is not None
        await sup.send("c-1", "slow")
        with anyio.fail_after(WAIT):
            await agent.streaming.wait()
        with pytest.raises(InvalidStatus, match="a turn is running") as refused:
            await sup.regenerate("c-1")
        assert refused.value.status == "running"
        with pytest.raises(InvalidStatus, match="a turn is running"):
            await sup.edit("c-1", state.messages[0].id, "changed")
        agent.gate.set()
        await _settled(sup, "c-1")
        assert agent.turns == 2


async def test_an_unknown_id_and_a_reply_id_are_refused_by_name(anyio_backend: str) -> None:
    agent = Recorder()
    async with _sup(agent) as sup:
        await _answered(sup, "c-1", "hello")
        state = await sup.load("c-1")
        assert state is not None
        with pytest.raises(UnknownMessage, match="'nope'") as unknown:
            await sup.regenerate("c-1", message_id="nope")
        assert isinstance(unknown.value, LookupError)
        assert unknown.value.message_id == "nope"
        with pytest.raises(UnknownMessage, match="'nope'"):
            await sup.edit("c-1", "nope", "text")
        reply = state.messages[1]
        with pytest.raises(InvalidStatus, match="not a user message"):
            await sup.regenerate("c-1", message_id=reply.id)
        with pytest.raises(InvalidStatus, match="not a user message"):
            await sup.edit("c-1", reply.id, "text")
        # A superseded reply is gone from the conversation.
        await sup.regenerate("c-1")
        await _settled(sup, "c-1")
        with pytest.raises(UnknownMessage, match="superseded"):
            await sup.regenerate("c-1", message_id=reply.id)
        # Nothing stored: refused, and nothing is created.
        with pytest.raises(InvalidStatus, match="nothing is stored"):
            await sup.regenerate("c-2")
        assert await sup.load("c-2") is None
        assert agent.turns == 2


async def test_another_owners_conversation_is_refused(anyio_backend: str) -> None:
    agent = Recorder()
    async with _sup(agent, owner_of=lambda scope: scope) as sup:
        await _answered(sup, "c-1", "hello", scope="alice")
        state = await sup.load("c-1", scope="alice")
        assert state is not None
        with pytest.raises(AccessDenied):
            await sup.regenerate("c-1", scope="bob")
        with pytest.raises(AccessDenied):
            await sup.edit("c-1", state.messages[0].id, "mine now", scope="bob")
        await sup.stop("c-1", scope="alice")
        with pytest.raises(AccessDenied):
            await sup.regenerate("c-1", scope="bob")
        assert agent.turns == 1


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_restart_keeps_the_superseded_messages_hidden(
    anyio_backend: str, kind: str, tmp_path: Path
) -> None:
    store: StateStore = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "c.db")
    agent = Recorder()
    async with _sup(agent, store=store) as sup:
        await _answered(sup, "c-1", "hello")
        await sup.regenerate("c-1")
        await _settled(sup, "c-1")
        await sup.stop("c-1")
    agent = Recorder()
    async with _sup(agent, store=store) as sup:
        state = await sup.load("c-1")  # from the store
        assert state is not None
        assert _texts(state.messages) == ["user:hello", "assistant:answer 2 to hello"]
        await _answered(sup, "c-1", "again")  # the woken session's agent
        assert agent.seen[-1] == ["user:hello", "assistant:answer 2 to hello", "user:again"]
        stored = await stored_state(store, "c-1")
        assert len(stored.messages) == 6 and len(stored.superseded) == 2
    if isinstance(store, SQLiteStore):
        await store.aclose()


async def test_a_regenerate_wakes_a_stopped_conversation(anyio_backend: str) -> None:
    agent = Recorder()
    async with _sup(agent) as sup:
        await _answered(sup, "c-1", "hello")
        await sup.stop("c-1")
        await sup.regenerate("c-1")
        await _settled(sup, "c-1")
        state = await sup.load("c-1")
        assert state is not None
        assert _texts(state.messages) == ["user:hello", "assistant:answer 2 to hello"]


@pytest.mark.parametrize("keep", [True, False])
async def test_cancel_keeps_the_streamed_text_only_when_asked(
    anyio_backend: str, keep: bool
) -> None:
    agent = Recorder()
    async with _sup(agent) as sup:
        await sup.send("c-1", "slow")
        with anyio.fail_after(WAIT):
            await agent.streaming.wait()
        assert await sup.cancel("c-1", keep_partial=keep) is Status.CANCELLED
        # Stored before the cancel returned.
        stored = await stored_state(sup.store, "c-1")
        record = await sup.store.load("c-1")
        assert record is not None and record.lifecycle == "cancel"
        if keep:
            assert _texts(stored.messages) == ["user:slow", "assistant:partial answer"]
            assert stored.messages[1].metadata == {"cancelled": True}
        else:
            assert _texts(stored.messages) == ["user:slow"]
        # The queue stays held, as after any cancel; the next turn sees what was kept.
        agent.gate.set()
        await _answered(sup, "c-1", "next")
        assert agent.seen[-1][-1] == "user:next"
        assert ("assistant:partial answer" in agent.seen[-1]) is keep


async def test_a_cancel_that_keeps_adds_nothing_when_nothing_streamed(anyio_backend: str) -> None:
    started = anyio.Event()

    class Quiet:
        async def run(self, turn: Turn) -> Any:
            started.set()
            await anyio.sleep_forever()

    async with SessionSupervisor(SingleRouter(lambda a, c: Quiet()), clock=ManualClock()) as sup:
        await sup.send("c-1", "hi")
        with anyio.fail_after(WAIT):
            await started.wait()
        assert await sup.cancel("c-1", keep_partial=True) is Status.CANCELLED
        stored = await stored_state(sup.store, "c-1")
        assert _texts(stored.messages) == ["user:hi"]
        with pytest.raises(TypeError, match="keep_partial"):
            await sup.cancel("c-1", keep_partial="yes")  # type: ignore[arg-type]


async def test_regenerate_after_a_kept_cancel_replaces_the_partial_answer(
    anyio_backend: str,
) -> None:
    agent = Recorder()
    async with _sup(agent) as sup:
        await sup.send("c-1", "slow")
        with anyio.fail_after(WAIT):
            await agent.streaming.wait()
        await sup.cancel("c-1", keep_partial=True)
        agent.gate.set()
        await sup.regenerate("c-1")
        await _settled(sup, "c-1")
        state = await sup.load("c-1")
        assert state is not None
        assert _texts(state.messages) == ["user:slow", "assistant:answer 2 to slow"]
        assert agent.seen[-1] == ["user:slow"]
