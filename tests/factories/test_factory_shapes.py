"""Every shape of factory the docs promise is called, and awaited only when it must be."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from sessionvisor.factories import Factory, SessionOpts, invoke_factory

from ._agents import EchoAgent


@pytest.mark.anyio
async def test_sync_function_factory_gets_agent_id_and_config(anyio_backend: str) -> None:
    def factory(agent_id: str, config: Any) -> EchoAgent:
        return EchoAgent(agent_id, config)

    agent, opts = await invoke_factory(factory, "agent-c-1", {"persona": "analyst"})

    assert isinstance(agent, EchoAgent)
    assert agent.built_with == ("agent-c-1", {"persona": "analyst"})
    assert opts == SessionOpts()


@pytest.mark.anyio
async def test_async_function_factory_is_awaited(anyio_backend: str) -> None:
    async def factory(agent_id: str, config: Any) -> EchoAgent:
        return EchoAgent(agent_id, config)

    agent, _ = await invoke_factory(factory, "agent-c-2", 7)

    assert isinstance(agent, EchoAgent)
    assert agent.built_with == ("agent-c-2", 7)


@pytest.mark.anyio
async def test_object_with_sync_create_agent(anyio_backend: str) -> None:
    class SyncFactory:
        def create_agent(self, agent_id: str, config: Any) -> EchoAgent:
            return EchoAgent(agent_id, config)

    factory = SyncFactory()
    assert isinstance(factory, Factory)

    agent, _ = await invoke_factory(factory, "agent-c-3", "cfg")

    assert isinstance(agent, EchoAgent)
    assert agent.built_with == ("agent-c-3", "cfg")


@pytest.mark.anyio
async def test_object_with_async_create_agent(anyio_backend: str) -> None:
    class AsyncFactory:
        async def create_agent(self, agent_id: str, config: Any) -> EchoAgent:
            return EchoAgent(agent_id, config)

    agent, _ = await invoke_factory(AsyncFactory(), "agent-c-4", None)

    assert isinstance(agent, EchoAgent)
    assert agent.built_with == ("agent-c-4", None)


@pytest.mark.anyio
async def test_create_agent_wins_over_call_on_an_object_with_both(anyio_backend: str) -> None:
    class Both:
        def create_agent(self, agent_id: str, config: Any) -> EchoAgent:
            return EchoAgent(agent_id, "create_agent")

        def __call__(self, agent_id: str, config: Any) -> EchoAgent:
            return EchoAgent(agent_id, "__call__")

    agent, _ = await invoke_factory(Both(), "agent-c-5", None)

    assert isinstance(agent, EchoAgent)
    assert agent.built_with == ("agent-c-5", "create_agent")


@pytest.mark.anyio
async def test_object_with_async_call_is_awaited(anyio_backend: str) -> None:
    # iscoroutinefunction() is False for such an object: detection must use the result.
    class CallableFactory:
        async def __call__(self, agent_id: str, config: Any) -> EchoAgent:
            return EchoAgent(agent_id, config)

    agent, _ = await invoke_factory(CallableFactory(), "agent-c-6", 1)

    assert isinstance(agent, EchoAgent)
    assert agent.built_with == ("agent-c-6", 1)


@pytest.mark.anyio
async def test_plain_lambda_factory(anyio_backend: str) -> None:
    agent, _ = await invoke_factory(lambda agent_id, config: EchoAgent(agent_id, config), "a", 2)

    assert isinstance(agent, EchoAgent)
    assert agent.built_with == ("a", 2)


@pytest.mark.anyio
async def test_sync_callable_returning_a_coroutine_is_awaited(anyio_backend: str) -> None:
    async def build(agent_id: str, config: Any) -> EchoAgent:
        return EchoAgent(agent_id, config)

    def factory(agent_id: str, config: Any) -> Any:
        return build(agent_id, config)  # a sync def handing back a coroutine

    agent, _ = await invoke_factory(factory, "a-7", "cfg")

    assert isinstance(agent, EchoAgent)
    assert agent.built_with == ("a-7", "cfg")


@pytest.mark.anyio
async def test_agent_with_decorated_async_run_is_accepted(anyio_backend: str) -> None:
    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            return fn(*args)

        return wrapper

    class DecoratedAgent:
        @logged
        async def run(self, turn: Any) -> Any:
            return None

    agent, _ = await invoke_factory(lambda agent_id, config: DecoratedAgent(), "a-8", None)

    assert isinstance(agent, DecoratedAgent)


@pytest.mark.anyio
async def test_agent_whose_run_is_an_async_callable_object_is_accepted(anyio_backend: str) -> None:
    class Runner:
        async def __call__(self, turn: Any) -> Any:
            return None

    class Agent:
        run = Runner()

    agent, _ = await invoke_factory(lambda agent_id, config: Agent(), "a-9", None)

    assert isinstance(agent, Agent)
