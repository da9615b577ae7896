"""What a factory returns next to its agent becomes one checked ``SessionOpts``."""

from __future__ import annotations

from typing import Any

import pytest

from sessionvisor._options import SupervisorOpts
from sessionvisor.factories import FactoryContractError, SessionOpts, invoke_factory
from sessionvisor.state._models import Message

from ._agents import EchoAgent


def test_session_opts_defaults_are_empty() -> None:
    opts = SessionOpts()

    assert opts.fresh_state_attrs == {}
    assert opts.supervisor_opts is None
    assert opts.extra == {}


@pytest.mark.anyio
async def test_session_opts_form_is_returned_as_given(anyio_backend: str) -> None:
    given = SessionOpts(
        fresh_state_attrs={"metadata": {"persona": "analyst"}},
        supervisor_opts={"max_queued": 5},
        extra={"tenant": "acme"},
    )
    agent = EchoAgent()

    got_agent, opts = await invoke_factory(lambda aid, cfg: (agent, given), "a-1", None)

    assert got_agent is agent
    assert opts == given


@pytest.mark.anyio
async def test_mapping_form_sends_every_other_key_to_extra(anyio_backend: str) -> None:
    def factory(agent_id: str, config: Any) -> Any:
        return EchoAgent(), {
            "fresh_state_attrs": {"metadata": {"k": 1}},
            "supervisor_opts": {"inactivity_timeout": 60},
            "tenant": "acme",
            "tools": ["search"],
        }

    _, opts = await invoke_factory(factory, "a-1", None)

    assert opts == SessionOpts(
        fresh_state_attrs={"metadata": {"k": 1}},
        supervisor_opts={"inactivity_timeout": 60},
        extra={"tenant": "acme", "tools": ["search"]},
    )


@pytest.mark.anyio
async def test_mapping_form_with_only_extra_keys(anyio_backend: str) -> None:
    _, opts = await invoke_factory(lambda aid, cfg: (EchoAgent(), {"tenant": "acme"}), "a", None)

    assert opts == SessionOpts(extra={"tenant": "acme"})


@pytest.mark.anyio
async def test_returned_options_are_copies_of_the_factorys_dicts(anyio_backend: str) -> None:
    shared_fresh: dict[str, Any] = {"metadata": {}}
    shared_extra: dict[str, Any] = {"tenant": "acme"}

    def factory(agent_id: str, config: Any) -> Any:
        return EchoAgent(), SessionOpts(fresh_state_attrs=shared_fresh, extra=shared_extra)

    _, opts = await invoke_factory(factory, "a", None)
    shared_fresh["queued"] = []
    shared_extra["tenant"] = "other"

    assert opts.fresh_state_attrs == {"metadata": {}}
    assert opts.extra == {"tenant": "acme"}


@pytest.mark.anyio
async def test_whole_supervisor_opts_is_kept_as_is(anyio_backend: str) -> None:
    whole = SupervisorOpts(restart="temporary")

    _, opts = await invoke_factory(
        lambda aid, cfg: (EchoAgent(), {"supervisor_opts": whole}), "a", None
    )

    assert opts.supervisor_opts is whole


@pytest.mark.anyio
async def test_fresh_state_attrs_with_valid_fields_is_accepted(anyio_backend: str) -> None:
    seed = {"messages": [Message(role="system", content="be brief")], "metadata": {"n": 1}}

    _, opts = await invoke_factory(
        lambda aid, cfg: (EchoAgent(), {"fresh_state_attrs": seed}), "a", None
    )

    assert opts.fresh_state_attrs == seed


@pytest.mark.anyio
async def test_supervisor_opts_with_unknown_key_is_a_contract_error(anyio_backend: str) -> None:
    def opts_with_typo(agent_id: str, config: Any) -> Any:
        return EchoAgent(), {"supervisor_opts": {"max_restart": 3}}

    with pytest.raises(FactoryContractError) as info:
        await invoke_factory(opts_with_typo, "agent-c-9", None)

    message = str(info.value)
    assert "opts_with_typo" in message
    assert "agent-c-9" in message
    assert "max_restart" in message
    assert "max_restarts" in message  # the valid options are listed
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.anyio
async def test_supervisor_opts_with_bad_value_is_a_contract_error(anyio_backend: str) -> None:
    def negative_restarts(agent_id: str, config: Any) -> Any:
        return EchoAgent(), SessionOpts(supervisor_opts={"max_restarts": -1})

    with pytest.raises(FactoryContractError, match=r"negative_restarts.*max_restarts must be >= 0"):
        await invoke_factory(negative_restarts, "a", None)


@pytest.mark.anyio
async def test_supervisor_opts_of_wrong_type_is_a_contract_error(anyio_backend: str) -> None:
    def listed_opts(agent_id: str, config: Any) -> Any:
        return EchoAgent(), {"supervisor_opts": ["max_queued", 5]}

    with pytest.raises(FactoryContractError, match=r"listed_opts.*supervisor_opts is invalid"):
        await invoke_factory(listed_opts, "a", None)
