"""``in_thread`` keeps a blocking factory off the event loop."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from sessionvisor.factories import FactoryContractError, SessionOpts, in_thread, invoke_factory
from sessionvisor.testing import wait_until

from ._agents import EchoAgent


@pytest.mark.anyio
async def test_factory_runs_on_another_thread_than_the_event_loop(anyio_backend: str) -> None:
    seen: list[int] = []

    def blocking_factory(agent_id: str, config: Any) -> Any:
        seen.append(threading.get_ident())
        return EchoAgent(agent_id, config), {"tenant": "acme"}

    agent, opts = await invoke_factory(in_thread(blocking_factory), "a-1", "cfg")

    assert seen and seen[0] != threading.get_ident()
    assert isinstance(agent, EchoAgent)
    assert agent.built_with == ("a-1", "cfg")
    assert opts == SessionOpts(extra={"tenant": "acme"})


@pytest.mark.anyio
async def test_object_with_sync_create_agent_runs_on_a_worker_thread(anyio_backend: str) -> None:
    class BlockingFactory:
        def __init__(self) -> None:
            self.thread: int | None = None

        def create_agent(self, agent_id: str, config: Any) -> EchoAgent:
            self.thread = threading.get_ident()
            return EchoAgent(agent_id, config)

    factory = BlockingFactory()

    agent, _ = await invoke_factory(in_thread(factory), "a-2", None)

    assert isinstance(agent, EchoAgent)
    assert factory.thread is not None and factory.thread != threading.get_ident()


@pytest.mark.anyio
async def test_event_loop_keeps_running_while_the_factory_blocks(anyio_backend: str) -> None:
    entered = threading.Event()
    released = threading.Event()
    results: list[Any] = []

    def waits_for_the_loop(agent_id: str, config: Any) -> EchoAgent:
        entered.set()
        # Only a task on the event loop sets the event: if this ran on the
        # loop thread, nothing could, and the wait would time out.
        if not released.wait(timeout=5):
            raise TimeoutError("the event loop was blocked")
        return EchoAgent(agent_id, config)

    async def start() -> None:
        results.append(await invoke_factory(in_thread(waits_for_the_loop), "a-3", None))

    async with anyio.create_task_group() as tg:
        tg.start_soon(start)
        await wait_until(entered.is_set)  # the factory blocks, and the loop still runs
        released.set()

    assert isinstance(results[0][0], EchoAgent)


@pytest.mark.anyio
async def test_limiter_caps_concurrent_factory_calls(anyio_backend: str) -> None:
    lock = threading.Lock()
    running = 0
    peak = 0

    def slow_factory(agent_id: str, config: Any) -> EchoAgent:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        threading.Event().wait(0.02)
        with lock:
            running -= 1
        return EchoAgent(agent_id, config)

    factory = in_thread(slow_factory, limiter=anyio.CapacityLimiter(1))
    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(invoke_factory, factory, f"a-{n}", None)

    assert peak == 1


def test_wrapping_an_async_factory_fails_at_once() -> None:
    async def already_async(agent_id: str, config: Any) -> EchoAgent:
        return EchoAgent(agent_id, config)

    class AsyncCreate:
        async def create_agent(self, agent_id: str, config: Any) -> EchoAgent:
            return EchoAgent(agent_id, config)

    class AsyncCall:
        async def __call__(self, agent_id: str, config: Any) -> EchoAgent:
            return EchoAgent(agent_id, config)

    for factory in (already_async, AsyncCreate(), AsyncCall()):
        with pytest.raises(FactoryContractError, match=r"is async; in_thread is for blocking"):
            in_thread(factory)


@pytest.mark.anyio
async def test_sync_factory_returning_a_coroutine_is_a_contract_error(anyio_backend: str) -> None:
    async def build(agent_id: str) -> EchoAgent:
        return EchoAgent(agent_id)

    def secretly_async(agent_id: str, config: Any) -> Any:
        return build(agent_id)

    with pytest.raises(FactoryContractError, match=r"secretly_async.*in_thread is for blocking"):
        await invoke_factory(in_thread(secretly_async), "a", None)


@pytest.mark.anyio
async def test_contract_errors_name_the_wrapped_factory(anyio_backend: str) -> None:
    def returns_nothing(agent_id: str, config: Any) -> None:
        return None

    with pytest.raises(FactoryContractError, match=r"factory in_thread\(.*returns_nothing\)"):
        await invoke_factory(in_thread(returns_nothing), "a", None)


def test_wrapping_a_non_factory_fails_at_once() -> None:
    with pytest.raises(FactoryContractError, match="is not a factory"):
        in_thread("not a factory")  # type: ignore[arg-type]
