"""Agents and factories shared by the factory tests."""

from __future__ import annotations

from typing import Any

from sessionvisor.agents import Done, Turn


class EchoAgent:
    """A minimal valid agent; ``built_with`` records what the factory was given."""

    def __init__(self, agent_id: str = "a-1", config: Any = None) -> None:
        self.built_with = (agent_id, config)

    async def run(self, turn: Turn) -> Done:
        return Done(turn.state, reply="echo")

    def __repr__(self) -> str:
        return f"EchoAgent{self.built_with!r}"


class SyncRunAgent:
    """Looks like an agent but its ``run`` is a plain function."""

    def run(self, turn: Turn) -> Done:
        return Done(turn.state)
