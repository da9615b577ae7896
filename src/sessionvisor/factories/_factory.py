"""The ``Factory`` protocol and ``SessionOpts``, what a factory may return with its agent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeAlias, runtime_checkable

import attrs

from .._options import SupervisorOpts
from ..agents._agent import Agent

__all__ = ["Factory", "FactoryLike", "FactoryResult", "SessionOpts"]


@attrs.frozen
class SessionOpts:
    """Per-session options a factory returns next to its agent.

    Attributes:
        fresh_state_attrs: State fields seeded into a *fresh* State only; a
            conversation restored from the store keeps what it had.
        supervisor_opts: a mapping overrides only its keys of the supervisor's
            defaults for this session; a whole ``SupervisorOpts`` replaces them.
        extra: forwarded to the session and to each turn as ``turn.extra``;
            the runtime never looks inside.
    """

    fresh_state_attrs: Mapping[str, Any] = attrs.field(factory=dict)
    supervisor_opts: SupervisorOpts | Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)


FactoryResult: TypeAlias = Agent | tuple[Agent, SessionOpts | Mapping[str, Any]]


@runtime_checkable
class Factory(Protocol):
    """Builds the agent of one conversation.

    ``create_agent`` may be sync or async; a plain callable ``(agent_id,
    config)`` works too. It returns an agent, ``(agent, SessionOpts)`` or
    ``(agent, mapping)``, and refuses by raising ``FactoryValidationError``
    (bad client input) or ``FactoryPermissionError`` (caller may not).
    """

    def create_agent(
        self, agent_id: str, config: Any
    ) -> FactoryResult | Awaitable[FactoryResult]: ...


#: What ``invoke_factory`` and the routers accept as a factory.
FactoryLike: TypeAlias = Factory | Callable[[str, Any], Any]
