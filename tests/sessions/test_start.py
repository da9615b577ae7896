"""``start``: idempotent, single-flight, and all-or-nothing."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from sessionvisor import (
    MemoryStore,
    SessionHandle,
    SessionInfo,
    SessionSupervisor,
    Status,
)
from sessionvisor.testing import FlakyStore, StoreUnavailable, wait_for_status, wait_until_settled

from ._support import (
    WAIT,
    Backend,
    FactoryDown,
    RouterDown,
    stored_record,
    supervisor,
    texts,
)


@pytest.mark.anyio
async def test_start_returns_info_for_a_new_session(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        info = await sup.start("c-1")

        assert isinstance(info, SessionInfo)
        assert info.conversation_id == "c-1"
        assert info.agent_id == "conversation-c-1"
        assert info.started is True
        assert isinstance(info.handle, SessionHandle)
        assert info.handle.conversation_id == "c-1"
        assert info.handle.agent_id == "conversation-c-1"
        assert info.handle.status is Status.IDLE
        assert await sup.running("c-1") is True
        assert await sup.status("c-1") is Status.IDLE
        assert sup.get("c-1") is info.handle
        assert backend.factory_calls == [("conversation-c-1", {})]


@pytest.mark.anyio
async def test_custom_agent_id_reaches_the_factory_and_the_events(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend, agent_id=lambda cid: f"bot/{cid}") as sup:
        info = await sup.start("c-1")
        async with sup.subscribe("c-1") as events:
            await sup.send("c-1", "hi")
            with anyio.fail_after(WAIT):
                async for event in events:
                    assert event.agent_id == "bot/c-1"
                    if event.seq >= 3:
                        break

    assert info.agent_id == "bot/c-1"
    assert backend.factory_calls[0][0] == "bot/c-1"


@pytest.mark.anyio
async def test_second_start_finds_the_live_session(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        first = await sup.start("c-1")
        second = await sup.start("c-1")

        assert first.started is True
        assert second.started is False
        assert second.handle is first.handle
        assert second.agent_id == first.agent_id
        assert len(backend.router_calls) == 1
        assert len(backend.factory_calls) == 1
        assert len(await sup.list_running()) == 1


@pytest.mark.anyio
async def test_thousand_concurrent_starts_and_sends_make_one_session(anyio_backend: str) -> None:
    backend = Backend(supervisor_opts={"max_queued": 1000})
    backend.router_gate = anyio.Event()
    infos: list[SessionInfo] = []
    started_by_send: list[bool] = []
    sent: list[str] = []
    entered = 0

    async with supervisor(backend) as sup:

        async def starter() -> None:
            nonlocal entered
            entered += 1
            infos.append(await sup.start("c-1"))

        async def sender(i: int) -> None:
            nonlocal entered
            entered += 1
            delivery = await sup.send("c-1", f"m{i}")
            started_by_send.append(delivery.started)
            sent.append(f"m{i}")

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for i in range(500):
                    tg.start_soon(starter)
                    tg.start_soon(sender, i)
                await anyio.wait_all_tasks_blocked()
                assert entered == 1000 and len(backend.router_calls) == 1
                # Every caller is now inside the start (one consulting the router,
                # the others waiting on it): let the one router call finish.
                backend.router_gate.set()

        assert len(backend.router_calls) == 1
        assert len(backend.factory_calls) == 1
        assert len(infos) == 500 and len(sent) == 500
        handle = infos[0].handle
        assert all(info.handle is handle for info in infos)
        assert sup.get("c-1") is handle
        assert [info.started for info in infos].count(True) + started_by_send.count(True) == 1
        assert len(await sup.list_running()) == 1

        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        user_texts = texts(handle.snapshot(), "user")
        assert sorted(user_texts) == sorted(sent)
        assert handle.snapshot().queued == []


async def _fail_once(kind: str, backend: Backend, store: FlakyStore) -> type[Exception]:
    if kind == "router":
        backend.fail_router = 1
        return RouterDown
    if kind == "factory":
        backend.fail_factory = 1
        return FactoryDown
    store.fail_loads = 1
    return StoreUnavailable


@pytest.mark.anyio
@pytest.mark.parametrize("failing", ["router", "factory", "store_load"])
async def test_failed_start_leaves_nothing_and_next_call_tries_again(
    anyio_backend: str, failing: str
) -> None:
    backend = Backend()
    store = FlakyStore(MemoryStore())
    async with supervisor(backend, store=store) as sup:
        error = await _fail_once(failing, backend, store)

        with pytest.raises(error) as caught:
            await sup.start("c-1")

        assert "c-1" in str(caught.value)
        assert await sup.running("c-1") is False
        assert await sup.status("c-1") is Status.NOT_RUNNING
        assert sup.get("c-1") is None
        assert await sup.list_running() == []
        assert await store.load("c-1") is None
        router_calls = len(backend.router_calls)

        info = await sup.start("c-1")

        assert info.started is True
        assert len(backend.router_calls) == router_calls + 1
        assert await sup.running("c-1") is True
        delivery = await sup.send("c-1", "hello")
        assert delivery.started is False
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        assert texts(info.handle.snapshot()) == ["hello", "re: hello"]


@pytest.mark.anyio
@pytest.mark.parametrize("failing", ["router", "factory", "store_load"])
async def test_failed_send_on_a_new_conversation_stores_nothing(
    anyio_backend: str, failing: str
) -> None:
    backend = Backend()
    store = FlakyStore(MemoryStore())
    async with supervisor(backend, store=store) as sup:
        error = await _fail_once(failing, backend, store)

        with pytest.raises(error):
            await sup.send("c-1", "hello")

        assert await sup.running("c-1") is False
        assert await store.load("c-1") is None
        assert backend.agent.turns == []
        delivery = await sup.send("c-1", "again")
        assert delivery.started is True
        assert await wait_until_settled(sup, "c-1") is Status.IDLE
        state = sup.get("c-1")
        assert state is not None
        assert texts(state.snapshot()) == ["again", "re: again"]


@pytest.mark.anyio
async def test_concurrent_callers_of_a_failing_start_all_see_its_error(
    anyio_backend: str,
) -> None:
    backend = Backend()
    backend.router_gate = anyio.Event()
    backend.fail_router = 1
    errors: list[BaseException] = []

    async with supervisor(backend) as sup:

        async def starter() -> None:
            try:
                await sup.start("c-1")
            except RouterDown as exc:
                errors.append(exc)

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(starter)
                # Every starter joins the one start before the router answers.
                await anyio.wait_all_tasks_blocked()
                assert len(backend.router_calls) == 1
                backend.router_gate.set()

        assert len(errors) == 10
        assert len(backend.router_calls) == 1
        assert await sup.running("c-1") is False
        assert (await sup.start("c-1")).started is True


@pytest.mark.anyio
async def test_start_of_a_live_session_does_not_apply_its_options(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.start("c-1", request_opts={"persona": "analyst"})
        again = await sup.start("c-1", request_opts={"persona": "writer"})

        assert again.started is False
        assert [opts for _, _, opts in backend.router_calls] == [{"persona": "analyst"}]
        assert [config for _, config in backend.factory_calls] == [{"persona": "analyst"}]
        assert await sup.stop("c-1") == "stopped"
        record = await stored_record(sup.store, "c-1")
        assert record is not None
        assert record.request_opts == {"persona": "analyst"}


@pytest.mark.anyio
async def test_start_of_a_live_session_ignores_its_pending_resume(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.send("c-1", "ask me")
        await wait_for_status(sup, "c-1", Status.INTERRUPTED)

        again = await sup.start("c-1", pending_resume="yes")

        assert again.started is False
        assert backend.agent.answers == []
        assert await sup.status("c-1") is Status.INTERRUPTED


@pytest.mark.anyio
async def test_start_alone_persists_the_session_when_leaving(anyio_backend: str) -> None:
    store = MemoryStore()
    backend = Backend()
    async with supervisor(backend, store=store) as sup:
        await sup.start("c-1", request_opts={"persona": "analyst"})

    record = await store.load("c-1")
    assert record is not None
    assert record.request_opts == {"persona": "analyst"}
    assert record.route_key == "main"


@pytest.mark.anyio
async def test_start_after_a_restart_of_the_process_restores_the_conversation(
    anyio_backend: str, tmp_path: Any
) -> None:
    from sessionvisor import SQLiteStore

    path = tmp_path / "chat.db"
    async with SQLiteStore(path) as store, supervisor(Backend(), store=store) as sup:
        await sup.send("c-1", "hello")
        await wait_until_settled(sup, "c-1")

    backend = Backend()
    async with SQLiteStore(path) as store, supervisor(backend, store=store) as sup:
        info = await sup.start("c-1")
        assert info.started is True
        assert texts(info.handle.snapshot()) == ["hello", "re: hello"]
        assert info.handle.status is Status.IDLE


def test_supervisor_rejects_an_unknown_on_corrupt_policy() -> None:
    with pytest.raises(ValueError, match="on_corrupt"):
        SessionSupervisor(Backend(), on_corrupt="ignore")  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize("refusal", ["validation", "permission"])
async def test_factory_refusal_reaches_the_caller_unchanged(
    anyio_backend: str, refusal: str
) -> None:
    from sessionvisor import FactoryPermissionError, FactoryValidationError

    error = (
        FactoryValidationError("persona 'x' is unknown for conversation 'c-1'")
        if refusal == "validation"
        else FactoryPermissionError("user may not open conversation 'c-1'")
    )
    backend = Backend()
    original = backend.create_agent

    def refuse(agent_id: str, config: Any) -> Any:
        if backend.factory_calls == []:
            backend.factory_calls.append((agent_id, config))
            raise error
        return original(agent_id, config)

    backend.create_agent = refuse  # type: ignore[method-assign]
    async with supervisor(backend) as sup:
        with pytest.raises(type(error)) as caught:
            await sup.start("c-1")
        assert caught.value is error
        assert await sup.running("c-1") is False
        assert await sup.store.load("c-1") is None
        assert (await sup.start("c-1")).started is True
