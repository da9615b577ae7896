"""A factory that returns the wrong thing gets a ``FactoryContractError`` saying what and who."""

from __future__ import annotations

from typing import Any

import pytest

from sessionvisor.factories import FactoryContractError, SessionOpts, invoke_factory

from ._agents import EchoAgent, SyncRunAgent

AGENT = EchoAgent("agent-c-1")


def returns_none(agent_id: str, config: Any) -> Any:
    return None


def returns_a_string(agent_id: str, config: Any) -> Any:
    return "an agent, honestly"


def returns_four_items(agent_id: str, config: Any) -> Any:
    return (AGENT, {}, "x", 3)


def returns_agent_and_int(agent_id: str, config: Any) -> Any:
    return (AGENT, 42)


def returns_fresh_state_list(agent_id: str, config: Any) -> Any:
    return (AGENT, {"fresh_state_attrs": [1]})


def returns_unknown_state_field(agent_id: str, config: Any) -> Any:
    return (AGENT, {"fresh_state_attrs": {"no_such_field": 1}})


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("factory", "shown", "problem"),
    [
        (returns_none, "None", "None: expected an agent"),
        (returns_a_string, "'an agent, honestly'", "str has no run method"),
        (returns_four_items, repr((AGENT, {}, "x", 3)), "a tuple of 4 items"),
        (returns_agent_and_int, repr((AGENT, 42)), "SessionOpts or a mapping, got int"),
        (
            returns_fresh_state_list,
            repr((AGENT, {"fresh_state_attrs": [1]})),
            "fresh_state_attrs must be a mapping of State fields, got [1]",
        ),
        (
            returns_unknown_state_field,
            repr((AGENT, {"fresh_state_attrs": {"no_such_field": 1}})),
            "State does not have: no_such_field",
        ),
    ],
)
async def test_wrong_result_names_factory_and_shows_the_result(
    anyio_backend: str, factory: Any, shown: str, problem: str
) -> None:
    with pytest.raises(FactoryContractError) as info:
        await invoke_factory(factory, "agent-c-1", None)

    message = str(info.value)
    assert factory.__qualname__ in message
    assert f"returned {shown}" in message
    assert problem in message
    assert "agent-c-1" in message
    assert isinstance(info.value, TypeError)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "seed",
    [{"fresh_state_attrs": [1]}, {"fresh_state_attrs": {"no_such_field": 1}}],
)
async def test_bad_fresh_state_attrs_error_lists_valid_fields(
    anyio_backend: str, seed: dict[str, Any]
) -> None:
    with pytest.raises(FactoryContractError) as info:
        await invoke_factory(lambda aid, cfg: (AGENT, seed), "a", None)

    assert (
        "valid fields: messages, queued, metadata, interrupt, usage, journal, steps, "
        "superseded, version"
    ) in str(info.value)


@pytest.mark.anyio
async def test_fresh_state_attrs_with_wrong_value_type_is_a_contract_error(
    anyio_backend: str,
) -> None:
    def bad_messages(agent_id: str, config: Any) -> Any:
        return AGENT, SessionOpts(fresh_state_attrs={"messages": "hello"})

    with pytest.raises(FactoryContractError, match=r"bad_messages.*does not fit State: messages"):
        await invoke_factory(bad_messages, "a", None)


@pytest.mark.anyio
async def test_long_result_is_truncated_in_the_message(anyio_backend: str) -> None:
    def returns_a_long_string(agent_id: str, config: Any) -> Any:
        return "x" * 5000

    with pytest.raises(FactoryContractError) as info:
        await invoke_factory(returns_a_long_string, "a", None)

    message = str(info.value)
    assert "'xxxxxxxx" in message
    assert "..." in message
    assert len(message) < 600


@pytest.mark.anyio
async def test_agent_with_sync_run_is_a_contract_error(anyio_backend: str) -> None:
    def sync_agent(agent_id: str, config: Any) -> Any:
        return SyncRunAgent()

    with pytest.raises(FactoryContractError, match=r"sync_agent.*SyncRunAgent.run is not async"):
        await invoke_factory(sync_agent, "a", None)


@pytest.mark.anyio
async def test_agent_class_instead_of_instance_is_a_contract_error(anyio_backend: str) -> None:
    def returns_class(agent_id: str, config: Any) -> Any:
        return EchoAgent

    with pytest.raises(FactoryContractError, match=r"the class EchoAgent itself"):
        await invoke_factory(returns_class, "a", None)


@pytest.mark.anyio
async def test_first_tuple_item_must_be_an_agent(anyio_backend: str) -> None:
    def swapped(agent_id: str, config: Any) -> Any:
        return ({}, AGENT)

    with pytest.raises(FactoryContractError, match=r"swapped.*its first item is not an agent"):
        await invoke_factory(swapped, "a", None)


@pytest.mark.anyio
async def test_forgotten_await_inside_the_factory_is_named(anyio_backend: str) -> None:
    async def build() -> EchoAgent:
        return AGENT

    async def forgets_await(agent_id: str, config: Any) -> Any:
        return build()  # the coroutine itself, not the agent

    with pytest.raises(FactoryContractError, match=r"forgets_await.*an await is missing"):
        await invoke_factory(forgets_await, "a", None)


@pytest.mark.anyio
async def test_object_of_create_agent_factory_is_named_by_its_class(anyio_backend: str) -> None:
    class BrokenFactory:
        def create_agent(self, agent_id: str, config: Any) -> Any:
            return None

    with pytest.raises(FactoryContractError, match=r"factory <.*BrokenFactory object at"):
        await invoke_factory(BrokenFactory(), "a", None)


@pytest.mark.anyio
async def test_non_factory_is_a_contract_error(anyio_backend: str) -> None:
    with pytest.raises(FactoryContractError, match=r"42 is not a factory"):
        await invoke_factory(42, "a", None)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_factory_raising_contract_error_itself_propagates_unchanged(
    anyio_backend: str,
) -> None:
    own = FactoryContractError("mine")

    def factory(agent_id: str, config: Any) -> Any:
        raise own

    with pytest.raises(FactoryContractError) as info:
        await invoke_factory(factory, "a", None)

    assert info.value is own
