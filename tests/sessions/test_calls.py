"""``cancel``, ``stop``, the queries, the supervisor's lifetime, handles, input rules, seq."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from sessionvisor import (
    InvalidStatus,
    MemoryStore,
    NotRunning,
    RegistryUnavailable,
    SessionSummary,
    SessionSupervisor,
    Shutdown,
    SQLiteStore,
    Status,
    StatusChanged,
)
from sessionvisor.testing import collect_until, wait_for_status, wait_until, wait_until_settled

from ._support import (
    WAIT,
    Backend,
    ends_in,
    stored_record,
    stored_state,
    supervisor,
    texts,
)

# -- cancel --------------------------------------------------------------------


async def _slow_turn(sup: SessionSupervisor, backend: Backend, cid: str = "c-1") -> None:
    await sup.send(cid, "slow")
    with anyio.fail_after(WAIT):
        await backend.agent.slow_started.wait()


@pytest.mark.anyio
async def test_cancel_of_a_slow_turn_returns_promptly_with_cancelled(anyio_backend: str) -> None:
    backend = Backend()  # the slow turn is never released: only cancellation ends it
    async with supervisor(backend) as sup:
        async with sup.subscribe("c-1") as events:
            await _slow_turn(sup, backend)
            with anyio.fail_after(1):
                status = await sup.cancel("c-1")
            seen = await collect_until(events, ends_in(Status.CANCELLED))

        assert status is Status.CANCELLED
        assert await sup.status("c-1") is Status.CANCELLED
        assert seen[-1].seq == seen[-2].seq + 1
        record = await stored_record(sup.store, "c-1")
        assert record is not None
        assert record.lifecycle == "cancel"
        assert texts(await stored_state(sup.store, "c-1")) == ["slow"]


@pytest.mark.anyio
async def test_cancel_holds_the_queue_and_the_next_message_is_answered(
    anyio_backend: str,
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _slow_turn(sup, backend)
        await sup.send("c-1", "q1")

        with anyio.fail_after(1):
            assert await sup.cancel("c-1") is Status.CANCELLED

        await anyio.wait_all_tasks_blocked()  # whatever the cancel set off has run
        assert await sup.status("c-1") is Status.CANCELLED
        assert [m.content for m in (await stored_state(sup.store, "c-1")).queued] == ["q1"]

        delivery = await sup.send("c-1", "q2")

        assert delivery.queued is False
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert backend.agent.turns[-1] == ["slow", "q1", "q2"]
        state = await stored_state(sup.store, "c-1")
        assert texts(state) == ["slow", "q1", "q2", "re: q2"]
        assert state.queued == []


class _CompletionGate(MemoryStore):
    """Holds the save that ends a turn (``completion``) until ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = anyio.Event()
        self.gate = anyio.Event()

    async def save(self, conversation_id: str, record: Any, **kwargs: Any) -> Any:
        if record.lifecycle == "completion" and not self.gate.is_set():
            self.holding.set()
            await self.gate.wait()
        return await super().save(conversation_id, record, **kwargs)


@pytest.mark.anyio
async def test_a_cancel_too_late_for_its_turn_does_not_cut_the_next_one(
    anyio_backend: str,
) -> None:
    # The agent has answered and the turn is saving its answer when the cancel
    # arrives: too late for that turn. The message queued behind it runs next and
    # is answered; it is not cut and held by a cancel meant for the turn before.
    store = _CompletionGate()
    backend = Backend()
    async with supervisor(backend, store=store) as sup:
        await _slow_turn(sup, backend)
        assert (await sup.send("c-1", "behind")).queued
        backend.agent.release()
        with anyio.fail_after(WAIT):
            await store.holding.wait()  # answered; the answer's save is under way
        cancelled: list[Status] = []

        async def cancel() -> None:
            cancelled.append(await sup.cancel("c-1"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel)
            await anyio.wait_all_tasks_blocked()  # the cancel waits for the turn's end
            store.gate.set()
        assert cancelled[0] in (Status.RUNNING, Status.IDLE)
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        state = await stored_state(sup.store, "c-1")
        assert texts(state) == ["slow", "re: slow", "behind", "re: behind"]
        assert state.queued == []


@pytest.mark.anyio
async def test_cancel_through_the_handle(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        info = await sup.start("c-1")
        await _slow_turn(sup, backend)
        with anyio.fail_after(1):
            assert await info.handle.cancel() is Status.CANCELLED


@pytest.mark.anyio
@pytest.mark.parametrize("status", ["idle", "interrupted", "cancelled"])
async def test_cancel_without_a_running_turn_raises_invalid_status(
    anyio_backend: str, status: str
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        if status == "idle":
            await sup.start("c-1")
        elif status == "interrupted":
            await sup.send("c-1", "ask")
            await wait_for_status(sup, "c-1", Status.INTERRUPTED)
        else:
            await _slow_turn(sup, backend)
            await sup.cancel("c-1")

        with pytest.raises(InvalidStatus) as caught:
            await sup.cancel("c-1")

        assert caught.value.status == status
        assert "c-1" in str(caught.value)
        assert await sup.status("c-1") == status


@pytest.mark.anyio
async def test_cancel_of_a_conversation_that_is_not_running_raises_not_running(
    anyio_backend: str,
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        with pytest.raises(InvalidStatus) as caught:
            await sup.cancel("c-1")
        assert caught.value.status == "not_running"
        assert "c-1" in str(caught.value)
        assert backend.router_calls == []

        await sup.send("c-2", "hi")
        await wait_until_settled(sup, "c-2")
        await sup.stop("c-2")
        with pytest.raises(InvalidStatus) as caught:
            await sup.cancel("c-2")
        assert caught.value.status == "not_running"
        assert await sup.running("c-2") is False


# -- stop ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_stop_persists_stops_and_announces_shutdown(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.send("c-1", "hello")
        await wait_until_settled(sup, "c-1")
        async with sup.subscribe("c-1") as events:
            assert await sup.stop("c-1") == "stopped"
            seen = await collect_until(events, lambda e: isinstance(e, Shutdown))

        shutdown = seen[-1]
        assert isinstance(shutdown, Shutdown)
        assert shutdown.reason == "stopped"
        assert shutdown.status is Status.IDLE
        assert shutdown.interrupt_restorable is False
        assert shutdown.shutdown_at is not None and shutdown.shutdown_at.tzinfo is not None
        assert await sup.running("c-1") is False
        assert await sup.status("c-1") is Status.NOT_RUNNING
        assert sup.get("c-1") is None
        record = await stored_record(sup.store, "c-1")
        assert record is not None
        assert record.lifecycle == "shutdown"
        assert record.last_seq == shutdown.seq
        assert await sup.stop("c-1") == "not_running"


@pytest.mark.anyio
async def test_stop_of_an_unknown_conversation_is_not_running(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        assert await sup.stop("c-1") == "not_running"
        assert backend.router_calls == []
        assert await sup.store.load("c-1") is None


@pytest.mark.anyio
async def test_stop_during_a_turn_cancels_it_and_persists(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _slow_turn(sup, backend)
        await sup.send("c-1", "q1")
        with anyio.fail_after(1):
            assert await sup.stop("c-1") == "stopped"
        assert await sup.running("c-1") is False
        state = await stored_state(sup.store, "c-1")
        # The cut turn hands its message back: the next wake answers both, in order.
        assert texts(state) == []
        assert [m.content for m in state.queued] == ["slow", "q1"]


# -- queries -------------------------------------------------------------------


@pytest.mark.anyio
async def test_queries_describe_live_sessions(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        assert await sup.running("c-1") is False
        assert await sup.status("c-1") is Status.NOT_RUNNING
        assert sup.get("c-1") is None
        assert await sup.list_running() == []

        info = await sup.start("c-1")
        await sup.send("c-2", "ask")
        await wait_for_status(sup, "c-2", Status.INTERRUPTED)

        assert await sup.running("c-1") is True
        assert await sup.status("c-1") is Status.IDLE
        assert await sup.status("c-2") is Status.INTERRUPTED
        assert sup.get("c-1") is info.handle
        summaries = sorted(await sup.list_running(), key=lambda s: s.conversation_id)
        assert [(s.conversation_id, s.agent_id, s.status, s.restarts) for s in summaries] == [
            ("c-1", "conversation-c-1", Status.IDLE, 0),
            ("c-2", "conversation-c-2", Status.INTERRUPTED, 0),
        ]
        for summary in summaries:
            assert isinstance(summary, SessionSummary)
            assert isinstance(summary.last_activity_at, datetime)
            assert summary.last_activity_at.tzinfo is not None
        assert info.handle.info().conversation_id == "c-1"

        await sup.stop("c-1")
        assert [s.conversation_id for s in await sup.list_running()] == ["c-2"]


@pytest.mark.anyio
async def test_handle_snapshot_is_a_deep_copy(anyio_backend: str) -> None:
    async with supervisor(Backend()) as sup:
        await sup.send("c-1", "hello")
        await wait_until_settled(sup, "c-1")
        handle = sup.get("c-1")
        assert handle is not None
        snapshot = handle.snapshot()
        snapshot.metadata["x"] = 1
        snapshot.messages.clear()
        assert handle.snapshot().metadata == {}
        assert texts(handle.snapshot()) == ["hello", "re: hello"]


# -- the supervisor's lifetime ---------------------------------------------------


def _calls(sup: SessionSupervisor) -> dict[str, Callable[[], Awaitable[Any]]]:
    async def subscribe() -> None:
        async with sup.subscribe("c-1"):
            pass

    async def viewing() -> None:
        async with sup.viewing("c-1"):
            pass

    async def get() -> Any:
        return sup.get("c-1")

    return {
        "start": lambda: sup.start("c-1"),
        "send": lambda: sup.send("c-1", "hi"),
        "resume": lambda: sup.resume("c-1", "yes"),
        "dismiss": lambda: sup.dismiss("c-1"),
        "cancel": lambda: sup.cancel("c-1"),
        "stop": lambda: sup.stop("c-1"),
        "running": lambda: sup.running("c-1"),
        "status": lambda: sup.status("c-1"),
        "get": get,
        "list_running": lambda: sup.list_running(),
        "subscribe": subscribe,
        "viewing": viewing,
        "load": lambda: sup.load("c-1"),
        "delete": lambda: sup.delete("c-1"),
        "check_access": lambda: sup.check_access("c-1"),
    }


CALLS = list(_calls(SessionSupervisor(Backend())))


@pytest.mark.anyio
@pytest.mark.parametrize("call", CALLS)
async def test_every_call_before_entering_raises_registry_unavailable(
    anyio_backend: str, call: str
) -> None:
    backend = Backend()
    sup = supervisor(backend)

    with pytest.raises(RegistryUnavailable) as caught:
        await _calls(sup)[call]()

    if call != "list_running":
        assert "c-1" in str(caught.value)
    assert backend.router_calls == []
    assert await sup.store.load("c-1") is None


@pytest.mark.anyio
@pytest.mark.parametrize("call", CALLS)
async def test_every_call_after_leaving_raises_registry_unavailable(
    anyio_backend: str, call: str
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.send("c-1", "ask")
        await wait_for_status(sup, "c-1", Status.INTERRUPTED)
    router_calls = len(backend.router_calls)
    record = await sup.store.load("c-1")

    with pytest.raises(RegistryUnavailable) as caught:
        await _calls(sup)[call]()

    if call != "list_running":
        assert "c-1" in str(caught.value)
    assert len(backend.router_calls) == router_calls
    after = await sup.store.load("c-1")
    assert record is not None and after is not None
    assert after.version == record.version


@pytest.mark.anyio
async def test_leaving_persists_every_live_session(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.start("quiet")
        await sup.send("talked", "hello")
        await wait_until_settled(sup, "talked")
    quiet = await sup.store.load("quiet")
    talked = await sup.store.load("talked")
    assert quiet is not None and quiet.lifecycle == "shutdown"
    assert talked is not None and len(talked.state["messages"]) == 2


# -- handles after stop ------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("call", ["send", "resume", "dismiss", "cancel", "stop"])
async def test_handle_calls_raise_not_running_after_stop(anyio_backend: str, call: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        handle = (await sup.start("c-1")).handle
        await sup.stop("c-1")
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "send": lambda: handle.send("hi"),
            "resume": lambda: handle.resume("yes"),
            "dismiss": lambda: handle.dismiss(),
            "cancel": lambda: handle.cancel(),
            "stop": lambda: handle.stop(),
        }

        with pytest.raises(NotRunning) as caught:
            await calls[call]()

        assert "c-1" in str(caught.value)
        assert handle.status is Status.NOT_RUNNING
        assert await sup.running("c-1") is False
        assert len(backend.router_calls) == 1


@pytest.mark.anyio
async def test_supervisor_calls_wake_the_conversation_after_stop(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        old = (await sup.start("c-1")).handle
        await sup.send("c-1", "hello")
        await wait_until_settled(sup, "c-1")
        await sup.stop("c-1")

        delivery = await sup.send("c-1", "again")

        assert delivery.started is True
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        new = sup.get("c-1")
        assert new is not None and new is not old
        assert old.status is Status.NOT_RUNNING
        assert texts(new.snapshot()) == ["hello", "re: hello", "again", "re: again"]
        assert len(backend.router_calls) == 2
        with pytest.raises(NotRunning):
            await old.send("stale")

        await sup.stop("c-1")
        info = await sup.start("c-1")
        assert info.started is True


# -- input rules ---------------------------------------------------------------------

BAD_IDS: list[Any] = [
    pytest.param(42, TypeError, id="int"),
    pytest.param(None, TypeError, id="none"),
    pytest.param(b"c-1", TypeError, id="bytes"),
    pytest.param("", ValueError, id="empty"),
    pytest.param("x" * 257, ValueError, id="257-chars"),
    pytest.param("c-\n1", ValueError, id="newline"),
    pytest.param("c-\x001", ValueError, id="nul"),
    pytest.param("c-\x7f1", ValueError, id="del"),
    pytest.param("c-\x851", ValueError, id="c1-control"),
]

ID_CALLS = ["start", "send", "resume", "dismiss", "cancel", "stop", "running", "status", "get"]


async def _call_with_id(sup: SessionSupervisor, call: str, cid: Any) -> Any:
    if call == "send":
        return await sup.send(cid, "hi")
    if call == "resume":
        return await sup.resume(cid, "yes")
    if call == "get":
        return sup.get(cid)
    return await getattr(sup, call)(cid)


@pytest.mark.anyio
@pytest.mark.parametrize("call", ID_CALLS)
@pytest.mark.parametrize(("cid", "error"), BAD_IDS)
async def test_bad_conversation_id_is_refused_before_anything_happens(
    anyio_backend: str, call: str, cid: Any, error: type[Exception]
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        with pytest.raises(error, match="conversation_id"):
            await _call_with_id(sup, call, cid)
        assert backend.router_calls == []
        assert backend.factory_calls == []
        assert await sup.list_running() == []


@pytest.mark.anyio
async def test_bad_conversation_id_is_refused_by_subscribe_and_viewing(
    anyio_backend: str,
) -> None:
    async with supervisor(Backend()) as sup:
        with pytest.raises(ValueError, match="conversation_id"):
            async with sup.subscribe(""):
                pass
        with pytest.raises(TypeError, match="conversation_id"):
            async with sup.viewing(7):  # type: ignore[arg-type]
                pass


@pytest.mark.anyio
async def test_conversation_id_of_256_characters_is_accepted(anyio_backend: str) -> None:
    cid = "é" * 256
    async with supervisor(Backend()) as sup:
        info = await sup.start(cid)
        assert info.conversation_id == cid


def _nested(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


BAD_CONTENT: list[Any] = [
    pytest.param(42, TypeError, id="int"),
    pytest.param(None, TypeError, id="none"),
    pytest.param({"type": "text", "text": "hi"}, TypeError, id="bare-mapping"),
    pytest.param(["hi"], TypeError, id="list-of-str"),
    pytest.param([{"text": "no type"}], TypeError, id="part-without-type"),
    pytest.param([{"type": 3}], TypeError, id="part-with-int-type"),
    pytest.param("x" * 1001, ValueError, id="too-large-str"),
    pytest.param([{"type": "text", "text": "x" * 1000}], ValueError, id="too-large-parts"),
    # What no store can keep: refused here, not acknowledged and then dropped by the save.
    pytest.param([{"type": "text", "x": _nested(63)}], ValueError, id="nested-65-levels"),
    pytest.param([{"type": "text", "x": _nested(300)}], ValueError, id="nested-302-levels"),
    pytest.param("x\ud800y", ValueError, id="lone-surrogate"),
    pytest.param([{"type": "text", "\udc00": 1}], ValueError, id="lone-surrogate-key"),
    pytest.param([{"type": "num", "n": float("inf")}], ValueError, id="infinity"),
    pytest.param([{"type": "num", "n": 10**1200}], ValueError, id="huge-int"),
    pytest.param([{"type": "blob", "b": b"raw"}], TypeError, id="bytes"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("content", "error"), BAD_CONTENT)
async def test_bad_content_is_refused_before_anything_happens(
    anyio_backend: str, content: Any, error: type[Exception]
) -> None:
    backend = Backend()
    async with supervisor(backend, supervisor_opts={"max_message_bytes": 1000}) as sup:
        with pytest.raises(error, match="content"):
            await sup.send("c-1", content)
        assert backend.router_calls == []
        assert await sup.running("c-1") is False
        assert await sup.store.load("c-1") is None


@pytest.mark.anyio
async def test_content_nested_64_levels_deep_is_stored_and_read_back(anyio_backend: str) -> None:
    content = [{"type": "text", "text": "deep", "x": _nested(62)}]  # list, part, 62 more
    async with supervisor(Backend()) as sup:
        await sup.send("c-1", content)
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        stored = await stored_state(sup.store, "c-1")
        assert stored.messages[0].content == content


@pytest.mark.anyio
async def test_an_answer_no_store_can_keep_is_refused_and_the_question_stays(
    anyio_backend: str,
) -> None:
    async with supervisor(Backend()) as sup:
        await sup.send("c-1", "ask")
        assert await wait_until_settled(sup, "c-1") is Status.INTERRUPTED
        for answer in ({"a": _nested(64)}, "yes\ud800", float("nan"), {1, 2}):
            with pytest.raises((TypeError, ValueError), match="answer"):
                await sup.resume("c-1", answer)
        handle = sup.get("c-1")
        assert handle is not None
        with pytest.raises(ValueError, match="answer"):
            await handle.resume({"a": _nested(64)})
        assert await sup.status("c-1") is Status.INTERRUPTED
        assert (await stored_state(sup.store, "c-1")).interrupt is not None


@pytest.mark.anyio
async def test_bad_content_to_a_live_session_stores_nothing(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend, supervisor_opts={"max_message_bytes": 1000}) as sup:
        handle = (await sup.start("c-1")).handle
        with pytest.raises(ValueError, match="content"):
            await sup.send("c-1", "x" * 2000)
        with pytest.raises(TypeError, match="content"):
            await handle.send(5)  # type: ignore[arg-type]
        assert handle.snapshot().messages == []
        assert handle.snapshot().queued == []
        assert await sup.store.load("c-1") is None


@pytest.mark.anyio
async def test_content_of_exactly_max_message_bytes_is_accepted(anyio_backend: str) -> None:
    async with supervisor(Backend(), supervisor_opts={"max_message_bytes": 100}) as sup:
        await sup.send("c-1", "x" * 98)  # 100 bytes as JSON, quotes included
        assert await wait_until_settled(sup, "c-1") is Status.IDLE


BAD_OPTS: list[Any] = [
    pytest.param({"x": object()}, id="object-value"),
    pytest.param({"x": float("nan")}, id="nan"),
    pytest.param({"x": _nested(65)}, id="too-deep"),
    pytest.param({"x\udc80": 1}, id="lone-surrogate-key"),
    pytest.param({"x": {1, 2}}, id="set"),
    pytest.param({1: "a"}, id="int-key"),
    pytest.param(["persona"], id="list"),
    pytest.param("persona=x", id="str"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("call", ["start", "send", "resume", "dismiss"])
@pytest.mark.parametrize("opts", BAD_OPTS)
async def test_bad_request_opts_are_refused_before_anything_happens(
    anyio_backend: str, call: str, opts: Any
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        with pytest.raises((TypeError, ValueError), match="request_opts"):
            if call == "send":
                await sup.send("c-1", "hi", request_opts=opts)
            elif call == "resume":
                await sup.resume("c-1", "yes", request_opts=opts)
            else:
                await getattr(sup, call)("c-1", request_opts=opts)
        assert backend.router_calls == []
        assert await sup.running("c-1") is False
        assert await sup.store.load("c-1") is None


# -- the events' seq -------------------------------------------------------------


@pytest.mark.anyio
async def test_event_seq_counts_from_one_and_continues_across_stop_and_wake(
    anyio_backend: str,
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        async with sup.subscribe("c-1") as events:
            first = await anext(events)
            assert isinstance(first, StatusChanged)
            assert (first.status, first.seq) == (Status.NOT_RUNNING, 0)

            await sup.send("c-1", "hello")
            seen = await collect_until(events, ends_in(Status.IDLE))
            await sup.stop("c-1")
            seen += await collect_until(events, lambda e: isinstance(e, Shutdown))
            await sup.send("c-1", "again")
            seen += await collect_until(events, ends_in(Status.IDLE))

        seqs = [e.seq for e in seen]
        assert seqs == list(range(1, len(seen) + 1))
        last = seqs[-1]

        await sup.stop("c-1")
        record = await stored_record(sup.store, "c-1")
        assert record is not None
        shutdown_seq = last + 1
        assert record.last_seq == shutdown_seq
        # A new subscriber, with nothing live, gets a snapshot carrying the last seq.
        async with sup.subscribe("c-1") as events:
            snapshot = await anext(events)
            assert isinstance(snapshot, StatusChanged)
            assert snapshot.status is Status.NOT_RUNNING
            assert snapshot.seq == shutdown_seq
            await sup.send("c-1", "third")
            woke = await collect_until(events, ends_in(Status.IDLE))
        assert [e.seq for e in woke] == list(range(shutdown_seq + 1, shutdown_seq + 1 + len(woke)))


@pytest.mark.anyio
async def test_event_seq_continues_in_a_new_process(anyio_backend: str, tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    async with SQLiteStore(path) as store, supervisor(Backend(), store=store) as sup:
        await sup.send("c-1", "hello")
        await wait_until_settled(sup, "c-1")
    async with SQLiteStore(path) as store:
        record = await store.load("c-1")
    assert record is not None and record.last_seq > 0

    async with SQLiteStore(path) as store, supervisor(Backend(), store=store) as sup:
        async with sup.subscribe("c-1") as events:
            snapshot = await anext(events)
            assert snapshot.seq == record.last_seq
            await sup.send("c-1", "again")
            seen = await collect_until(events, ends_in(Status.IDLE))
        assert [e.seq for e in seen] == list(
            range(record.last_seq + 1, record.last_seq + 1 + len(seen))
        )


@pytest.mark.anyio
async def test_calls_while_draining_raise_registry_unavailable_and_the_turn_finishes(
    anyio_backend: str,
) -> None:
    backend = Backend()
    refused: dict[str, BaseException | object] = {}
    async with anyio.create_task_group() as tg, supervisor(backend) as sup:
        await _slow_turn(sup, backend)

        async def probe() -> None:
            await wait_until(lambda: sup.draining, timeout=WAIT)
            for name, call in _calls(sup).items():
                try:
                    refused[name] = await call()
                except RegistryUnavailable as exc:
                    refused[name] = exc
            backend.agent.release()

        tg.start_soon(probe)

    assert set(refused) == set(CALLS)
    not_refused = {k: v for k, v in refused.items() if not isinstance(v, RegistryUnavailable)}
    assert not_refused == {}
    # The running turn was allowed to finish and its reply persisted.
    state = await stored_state(sup.store, "c-1")
    assert texts(state) == ["slow", "re: slow"]


@pytest.mark.anyio
async def test_send_racing_stop_is_not_lost(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _slow_turn(sup, backend)
        backend.agent.release()

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sup.stop, "c-1")
                tg.start_soon(sup.send, "c-1", "after")

        async def answered() -> bool:
            if "re: after" in texts(await stored_state(sup.store, "c-1")):
                return True
            if await sup.running("c-1"):
                await wait_until_settled(sup, "c-1")
            else:
                await sup.start("c-1")
            return False

        await wait_until(answered, timeout=WAIT)
        state = await stored_state(sup.store, "c-1")
        assert texts(state).count("after") == 1
        assert state.queued == []


@pytest.mark.anyio
async def test_handle_stop_stops_the_session(anyio_backend: str) -> None:
    async with supervisor(Backend()) as sup:
        handle = (await sup.start("c-1")).handle
        assert await handle.stop() == "stopped"
        assert handle.status is Status.NOT_RUNNING
        assert await sup.running("c-1") is False
        record = await stored_record(sup.store, "c-1")
        assert record is not None and record.lifecycle == "shutdown"


@pytest.mark.anyio
async def test_a_smaller_per_session_message_limit_is_enforced(anyio_backend: str) -> None:
    backend = Backend(supervisor_opts={"max_message_bytes": 100})
    async with supervisor(backend) as sup:
        await sup.start("c-1")
        with pytest.raises(ValueError, match="max_message_bytes=100") as caught:
            await sup.send("c-1", "x" * 500)
        assert "c-1" in str(caught.value)
        assert await sup.store.load("c-1") is None


@pytest.mark.anyio
async def test_a_larger_per_session_message_limit_is_honoured(anyio_backend: str) -> None:
    # The factory raised this session's limit above the supervisor's default.
    backend = Backend(supervisor_opts={"max_message_bytes": 10_000})
    async with supervisor(backend, supervisor_opts={"max_message_bytes": 1000}) as sup:
        await sup.start("c-1")
        delivery = await sup.send("c-1", "x" * 5000)
        assert delivery.queued is False
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert texts(await stored_state(sup.store, "c-1"))[0] == "x" * 5000


@pytest.mark.anyio
async def test_cancel_right_after_send_cancels_that_turn(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.start("c-1")
        await sup.send("c-1", "hello")
        with anyio.fail_after(1):
            status = await sup.cancel("c-1")

        assert status is Status.CANCELLED
        await anyio.wait_all_tasks_blocked()  # whatever the cancel set off has run
        assert await sup.status("c-1") is Status.CANCELLED
        state = await stored_state(sup.store, "c-1")
        assert texts(state) == ["hello"]

        await sup.send("c-1", "again")
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert texts(await stored_state(sup.store, "c-1")) == ["hello", "again", "re: again"]


@pytest.mark.anyio
async def test_stop_of_an_interrupted_session_says_the_interrupt_is_restorable(
    anyio_backend: str,
) -> None:
    async with supervisor(Backend()) as sup:
        await sup.send("c-1", "ask")
        await wait_for_status(sup, "c-1", Status.INTERRUPTED)
        async with sup.subscribe("c-1") as events:
            assert await sup.stop("c-1") == "stopped"
            seen = await collect_until(events, lambda e: isinstance(e, Shutdown))
        shutdown = seen[-1]
        assert isinstance(shutdown, Shutdown)
        assert shutdown.status is Status.INTERRUPTED
        assert shutdown.interrupt_restorable is True
        assert (await stored_state(sup.store, "c-1")).interrupt is not None


@pytest.mark.anyio
async def test_each_conversation_counts_its_own_seq(anyio_backend: str) -> None:
    async with supervisor(Backend()) as sup:
        await sup.send("c-1", "hello")
        await wait_until_settled(sup, "c-1")
        await sup.send("c-1", "again")
        await wait_until_settled(sup, "c-1")
        async with sup.subscribe("c-2") as events:
            assert (await anext(events)).seq == 0
            await sup.send("c-2", "hello")
            seen = await collect_until(events, ends_in(Status.IDLE))
        assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
