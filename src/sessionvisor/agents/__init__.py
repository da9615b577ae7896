"""Agents: what runs a turn.

``Agent`` is the protocol the runtime calls; ``Turn`` is what one run sees;
``Done``, ``Interrupt`` and ``Pause`` are how it ends. ``FunctionAgent`` wraps
plain functions. ``sessionvisor.agents.pydantic_ai`` adapts pydantic-ai (an
optional extra). This package imports ``state`` only, never ``sessions``.
"""

from ._agent import Agent, Done, Interrupt, Outcome, Pause, Turn
from ._function import FunctionAgent

__all__ = ["Agent", "Done", "FunctionAgent", "Interrupt", "Outcome", "Pause", "Turn"]
