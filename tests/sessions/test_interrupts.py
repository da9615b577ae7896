"""``resume`` and ``dismiss``: answering interrupts, live or after a wake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from sessionvisor import (
    InvalidStatus,
    MemoryStore,
    MessageAppended,
    SQLiteStore,
    StateStore,
    Status,
    StatusChanged,
    StoredConversation,
)
from sessionvisor.testing import collect_until, wait_for_status, wait_until_settled

from ._support import (
    WAIT,
    Backend,
    ends_in,
    stored_record,
    stored_state,
    supervisor,
    texts,
)


async def _interrupted(sup: Any, cid: str = "c-1", cue: str = "ask me") -> None:
    await sup.send(cid, cue)
    await wait_for_status(sup, cid, Status.INTERRUPTED)


# -- resume --------------------------------------------------------------------


@pytest.mark.anyio
async def test_resume_answers_the_live_interrupt(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _interrupted(sup)
        record = await stored_record(sup.store, "c-1")
        assert record is not None and record.lifecycle == "interrupt"
        stored = dict(record.state["interrupt"])
        assert stored.pop("id").startswith("i-")  # each interrupt is named
        assert stored == {"kind": "question", "data": {"question": "ask me"}}

        async with sup.subscribe("c-1") as events:
            status = await sup.resume("c-1", "yes")
            seen = await collect_until(events, ends_in(Status.IDLE))

        assert status is Status.RUNNING
        assert backend.agent.answers == ["yes"]
        assert statuses_of(seen) == ["interrupted", "running", "idle"]
        running = [e for e in seen if isinstance(e, StatusChanged)][1]
        assert running.interrupt is None
        state = await stored_state(sup.store, "c-1")
        assert state.interrupt is None
        assert texts(state) == ["ask me", "answered yes"]


def statuses_of(events: list[Any]) -> list[str]:
    return [e.status.value for e in events if isinstance(e, StatusChanged)]


@pytest.mark.anyio
async def test_resume_wakes_a_stopped_session_and_applies_the_answer_first(
    anyio_backend: str,
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _interrupted(sup)
        assert await sup.stop("c-1") == "stopped"

        async with sup.subscribe("c-1") as events:
            status = await sup.resume("c-1", "yes")
            seen = await collect_until(events, ends_in(Status.IDLE))

        assert status is Status.RUNNING
        # The subscriber never saw the already-answered interrupt.
        assert statuses_of(seen) == ["not_running", "running", "idle"]
        assert all(e.interrupt is None for e in seen if isinstance(e, StatusChanged))
        assert backend.agent.answers == ["yes"]
        assert len(backend.factory_calls) == 2
        state = await stored_state(sup.store, "c-1")
        assert state.interrupt is None
        assert texts(state) == ["ask me", "answered yes"]


@pytest.mark.anyio
async def test_resume_in_a_new_process_never_shows_the_answered_interrupt(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = tmp_path / "chat.db"
    async with SQLiteStore(path) as store, supervisor(Backend(), store=store) as sup:
        await _interrupted(sup)

    backend = Backend()
    async with SQLiteStore(path) as store, supervisor(backend, store=store) as sup:
        async with sup.subscribe("c-1") as events:
            assert await sup.resume("c-1", {"approve": True}) is Status.RUNNING
            seen = await collect_until(events, ends_in(Status.IDLE))

        assert statuses_of(seen) == ["not_running", "running", "idle"]
        assert backend.agent.answers == [{"approve": True}]
        record = await store.load("c-1")
        assert record is not None
        assert record.state["interrupt"] is None


@pytest.mark.anyio
async def test_resume_wake_keeps_the_interrupt_stored_until_the_answer_is_done(
    anyio_backend: str,
) -> None:
    # Answer on a slow resume: while it runs the store still holds the interrupt,
    # so a crash there would not lose the question.
    backend = Backend()

    async def slow_resume(turn: Any, answer: Any) -> Any:
        from sessionvisor import Done

        backend.agent.answers.append(answer)
        backend.agent.slow_started.set()
        await backend.agent.wait_released()
        return Done(turn.state, reply=f"answered {answer}")

    backend.agent.resume = slow_resume
    async with supervisor(backend) as sup:
        await _interrupted(sup)
        await sup.stop("c-1")

        assert await sup.resume("c-1", "yes") is Status.RUNNING
        with anyio.fail_after(WAIT):
            await backend.agent.slow_started.wait()
        assert await sup.status("c-1") is Status.RUNNING
        during = await stored_state(sup.store, "c-1")
        assert during.interrupt is not None
        assert during.interrupt.data == {"question": "ask me"}
        backend.agent.release()
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert (await stored_state(sup.store, "c-1")).interrupt is None


class _WakeDuringLoad:
    """A store whose next load lets another caller wake the conversation first."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.hook: Any = None

    async def load(self, conversation_id: str) -> StoredConversation | None:
        hook, self.hook = self.hook, None
        if hook is not None:
            await hook()
        return await self.inner.load(conversation_id)

    async def save(self, conversation_id: str, record: Any, **kwargs: Any) -> int:
        return await self.inner.save(conversation_id, record, **kwargs)

    async def delete(self, conversation_id: str) -> None:
        await self.inner.delete(conversation_id)

    async def quarantine(self, conversation_id: str) -> str:
        return await self.inner.quarantine(conversation_id)


@pytest.mark.anyio
async def test_resume_reaches_a_session_someone_else_woke_meanwhile(anyio_backend: str) -> None:
    backend = Backend()
    store = _WakeDuringLoad(MemoryStore())
    woken: list[bool] = []
    async with supervisor(backend, store=store) as sup:
        await _interrupted(sup)
        await sup.stop("c-1")
        factory_calls = len(backend.factory_calls)

        async def someone_else_wakes_it() -> None:
            woken.append((await sup.start("c-1")).started)

        # resume finds nothing live, then reads the store; during that read
        # another caller wakes the session (still interrupted).
        store.hook = someone_else_wakes_it
        async with sup.subscribe("c-1") as events:
            status = await sup.resume("c-1", "yes")
            seen = await collect_until(events, ends_in(Status.IDLE))

        assert woken == [True]
        assert status is Status.RUNNING
        assert backend.agent.answers == ["yes"]
        assert len(backend.factory_calls) == factory_calls + 1
        assert "running" in statuses_of(seen)
        state = await stored_state(sup.store, "c-1")
        assert state.interrupt is None
        assert texts(state) == ["ask me", "answered yes"]


@pytest.mark.anyio
async def test_concurrent_resume_and_start_of_a_stopped_session_answer_once(
    anyio_backend: str,
) -> None:
    backend = Backend()
    results: list[Any] = []
    async with supervisor(backend) as sup:
        await _interrupted(sup)
        await sup.stop("c-1")
        factory_calls = len(backend.factory_calls)

        async def resume() -> None:
            results.append(await sup.resume("c-1", "yes"))

        async def start() -> None:
            results.append((await sup.start("c-1")).started)

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(start)
                tg.start_soon(resume)

        assert Status.RUNNING in results
        assert len(backend.factory_calls) == factory_calls + 1
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert backend.agent.answers == ["yes"]


@pytest.mark.anyio
@pytest.mark.parametrize("status", ["idle", "running", "paused"])
async def test_resume_of_a_live_session_that_is_not_interrupted_raises_invalid_status(
    anyio_backend: str, status: str
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        if status == "idle":
            await sup.start("c-1")
        elif status == "running":
            await sup.send("c-1", "slow")
            with anyio.fail_after(WAIT):
                await backend.agent.slow_started.wait()
        else:
            await sup.send("c-1", "pause")
            await wait_for_status(sup, "c-1", Status.PAUSED)
        factory_calls = len(backend.factory_calls)

        with pytest.raises(InvalidStatus) as caught:
            await sup.resume("c-1", "yes")

        assert caught.value.status == status
        assert "c-1" in str(caught.value)
        assert await sup.status("c-1") == status
        assert backend.agent.answers == []
        assert len(backend.factory_calls) == factory_calls
        backend.agent.release()


@pytest.mark.anyio
async def test_resume_of_a_woken_session_without_stored_interrupt_drops_the_answer(
    anyio_backend: str,
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.send("c-1", "hello")
        await wait_until_settled(sup, "c-1")
        await sup.stop("c-1")
        before = await stored_state(sup.store, "c-1")

        with pytest.raises(InvalidStatus) as caught:
            await sup.resume("c-1", "yes")

        assert "c-1" in str(caught.value)
        assert caught.value.status != "interrupted"
        assert backend.agent.answers == []
        await anyio.wait_all_tasks_blocked()  # a turn the refused resume set off would run
        after = await stored_state(sup.store, "c-1")
        assert texts(after) == texts(before) == ["hello", "re: hello"]
        assert after.interrupt is None
        assert len(backend.agent.turns) == 1


@pytest.mark.anyio
async def test_resume_of_an_unknown_conversation_raises_not_running_and_creates_nothing(
    anyio_backend: str,
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        with pytest.raises(InvalidStatus) as caught:
            await sup.resume("c-1", "yes")

        assert caught.value.status == "not_running"
        assert "c-1" in str(caught.value)
        assert await sup.running("c-1") is False
        assert await sup.store.load("c-1") is None
        assert backend.router_calls == []
        assert backend.factory_calls == []


@pytest.mark.anyio
async def test_handle_resume_answers_the_interrupt(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        info = await sup.start("c-1")
        await _interrupted(sup)
        assert await info.handle.resume("ok") is Status.RUNNING
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert backend.agent.answers == ["ok"]
        with pytest.raises(InvalidStatus, match="c-1"):
            await info.handle.resume("again")


@pytest.mark.anyio
async def test_resume_without_a_resume_hook_hands_the_answer_over_as_a_message(
    anyio_backend: str,
) -> None:
    from sessionvisor import FunctionAgent, Interrupt

    seen: list[list[str]] = []

    async def fn(turn: Any) -> Any:
        seen.append([m.text() for m in turn.state.messages])
        if len(seen) == 1:
            return Interrupt(turn.state, {"q": "color?"})
        return "thanks"

    backend = Backend(FunctionAgent(fn))
    async with supervisor(backend) as sup:
        await _interrupted(sup, cue="pick")
        await sup.resume("c-1", "blue")
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert seen[-1] == ["pick", "blue"]


# -- dismiss -------------------------------------------------------------------


@pytest.mark.anyio
async def test_dismiss_clears_a_notice_and_runs_the_held_queue(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.send("c-1", "slow notice")
        with anyio.fail_after(WAIT):
            await backend.agent.slow_started.wait()
        await sup.send("c-1", "q1")
        backend.agent.release()
        await wait_for_status(sup, "c-1", Status.INTERRUPTED)
        assert [m.content for m in (await stored_state(sup.store, "c-1")).queued] == ["q1"]

        async with sup.subscribe("c-1") as events:
            status = await sup.dismiss("c-1")
            seen = await collect_until(events, ends_in(Status.IDLE))

        assert status in (Status.IDLE, Status.RUNNING)
        assert statuses_of(seen)[:2] == ["interrupted", "idle"]
        assert [e.message.content for e in seen if isinstance(e, MessageAppended)] == [
            "q1",
            "re: q1",
        ]
        assert len(backend.agent.turns) == 2
        assert backend.agent.turns[-1][-1] == "q1"
        state = await stored_state(sup.store, "c-1")
        assert state.interrupt is None
        assert state.queued == []


@pytest.mark.anyio
async def test_dismiss_of_a_live_notice_leaves_the_session_idle(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _interrupted(sup, cue="notice this")

        assert await sup.dismiss("c-1") is Status.IDLE

        assert await sup.status("c-1") is Status.IDLE
        record = await stored_record(sup.store, "c-1")
        assert record is not None
        assert record.lifecycle == "dismiss"
        assert record.state["interrupt"] is None


@pytest.mark.anyio
async def test_dismiss_wakes_a_stopped_session_with_a_notice(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _interrupted(sup, cue="notice this")
        await sup.stop("c-1")

        assert await sup.dismiss("c-1") is Status.IDLE

        assert await sup.running("c-1") is True
        assert (await stored_state(sup.store, "c-1")).interrupt is None


@pytest.mark.anyio
async def test_dismiss_of_a_question_raises_invalid_status(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _interrupted(sup, cue="ask me")

        with pytest.raises(InvalidStatus) as caught:
            await sup.dismiss("c-1")

        assert caught.value.status == "interrupted"
        assert "c-1" in str(caught.value)
        assert await sup.status("c-1") is Status.INTERRUPTED
        assert (await stored_state(sup.store, "c-1")).interrupt is not None


@pytest.mark.anyio
async def test_dismiss_of_a_stored_question_raises_and_wakes_nothing(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _interrupted(sup, cue="ask me")
        await sup.stop("c-1")
        factory_calls = len(backend.factory_calls)
        before = await stored_record(sup.store, "c-1")

        with pytest.raises(InvalidStatus, match="c-1"):
            await sup.dismiss("c-1")

        assert await sup.running("c-1") is False
        assert len(backend.factory_calls) == factory_calls
        after = await stored_record(sup.store, "c-1")
        assert after is not None and before is not None
        assert after.version == before.version


@pytest.mark.anyio
async def test_dismiss_without_an_interrupt_raises_invalid_status(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.start("c-1")
        with pytest.raises(InvalidStatus) as caught:
            await sup.dismiss("c-1")
        assert caught.value.status == "idle"
        assert "c-1" in str(caught.value)

        await sup.send("c-2", "hello")
        await wait_until_settled(sup, "c-2")
        await sup.stop("c-2")
        with pytest.raises(InvalidStatus, match="c-2"):
            await sup.dismiss("c-2")
        assert await sup.running("c-2") is False


@pytest.mark.anyio
async def test_dismiss_of_an_unknown_conversation_creates_nothing(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        with pytest.raises(InvalidStatus) as caught:
            await sup.dismiss("c-1")

        assert caught.value.status == "not_running"
        assert "c-1" in str(caught.value)
        assert await sup.running("c-1") is False
        assert await sup.store.load("c-1") is None
        assert backend.router_calls == []


@pytest.mark.anyio
async def test_two_concurrent_resumes_of_a_stopped_session_answer_once(
    anyio_backend: str,
) -> None:
    backend = Backend()
    outcomes: list[Any] = []
    async with supervisor(backend) as sup:
        await _interrupted(sup)
        await sup.stop("c-1")

        async def answer(value: str) -> None:
            try:
                outcomes.append(await sup.resume("c-1", value))
            except InvalidStatus as exc:
                outcomes.append(exc)

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(answer, "yes")
                tg.start_soon(answer, "no")

        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert len(backend.agent.answers) == 1
        assert outcomes.count(Status.RUNNING) == 1
        refused = [o for o in outcomes if isinstance(o, InvalidStatus)]
        assert len(refused) == 1 and "c-1" in str(refused[0])
        assert texts(await stored_state(sup.store, "c-1")) == [
            "ask me",
            f"answered {backend.agent.answers[0]}",
        ]


@pytest.mark.anyio
async def test_two_concurrent_resumes_of_a_live_session_answer_once(anyio_backend: str) -> None:
    backend = Backend()
    outcomes: list[Any] = []
    async with supervisor(backend) as sup:
        await _interrupted(sup)

        async def answer(value: str) -> None:
            try:
                outcomes.append(await sup.resume("c-1", value))
            except InvalidStatus as exc:
                outcomes.append(exc)

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(answer, "yes")
                tg.start_soon(answer, "no")

        assert outcomes.count(Status.RUNNING) == 1
        refused = [o for o in outcomes if isinstance(o, InvalidStatus)]
        assert len(refused) == 1
        assert refused[0].status != "interrupted"
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert len(backend.agent.answers) == 1


@pytest.mark.anyio
async def test_start_with_pending_resume_wakes_and_answers(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _interrupted(sup)
        await sup.stop("c-1")

        async with sup.subscribe("c-1") as events:
            info = await sup.start("c-1", pending_resume="yes")
            seen = await collect_until(events, ends_in(Status.IDLE))

        assert info.started is True
        assert "interrupted" not in statuses_of(seen)
        assert backend.agent.answers == ["yes"]


@pytest.mark.anyio
async def test_send_while_interrupted_runs_the_held_queue_first(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.send("c-1", "slow ask")
        with anyio.fail_after(WAIT):
            await backend.agent.slow_started.wait()
        await sup.send("c-1", "q1")
        backend.agent.release()
        await wait_for_status(sup, "c-1", Status.INTERRUPTED)
        turns = len(backend.agent.turns)

        await sup.send("c-1", "q2")

        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert len(backend.agent.turns) == turns + 1
        assert backend.agent.turns[-1][-2:] == ["q1", "q2"]
        state = await stored_state(sup.store, "c-1")
        assert state.interrupt is None
        assert state.queued == []
        assert [i["kind"] for i in state.metadata["abandoned_interrupts"]] == ["question"]
        assert texts(state)[-3:] == ["q1", "q2", "re: q2"]


# -- interrupt ids ---------------------------------------------------------------


@pytest.mark.anyio
async def test_a_replayed_answer_never_answers_a_later_identical_question(
    anyio_backend: str,
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _interrupted(sup)
        first = (await sup.load("c-1")).interrupt
        assert first is not None and first.id
        assert await sup.resume("c-1", "yes", interrupt_id=first.id) is Status.RUNNING
        await wait_until_settled(sup, "c-1")

        await _interrupted(sup)  # the very same question again
        second = (await sup.load("c-1")).interrupt
        assert second is not None and second.data == first.data and second.id != first.id
        # The first answer, retried or replayed, is refused: it was for another interrupt.
        with pytest.raises(InvalidStatus, match="no longer pending"):
            await sup.resume("c-1", "yes", interrupt_id=first.id)
        assert await sup.status("c-1") is Status.INTERRUPTED
        assert backend.agent.answers == ["yes"]
        # Naming the pending one (or none) answers it.
        await sup.resume("c-1", "no", interrupt_id=second.id)
        await wait_until_settled(sup, "c-1")
        assert backend.agent.answers == ["yes", "no"]


@pytest.mark.anyio
async def test_an_answer_for_another_interrupt_does_not_wake_a_stopped_session(
    anyio_backend: str,
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _interrupted(sup)
        pending = (await sup.load("c-1")).interrupt
        assert pending is not None
        await sup.stop("c-1")
        with pytest.raises(InvalidStatus, match="no longer pending"):
            await sup.resume("c-1", "yes", interrupt_id="i-not-this-one")
        assert not await sup.running("c-1")
        # The stored interrupt keeps its id across the stop, so its own id still works.
        stored = await stored_state(sup.store, "c-1")
        assert stored.interrupt is not None and stored.interrupt.id == pending.id
        await sup.resume("c-1", "yes", interrupt_id=pending.id)
        await wait_until_settled(sup, "c-1")
        assert backend.agent.answers == ["yes"]
