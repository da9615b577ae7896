"""Factories: what builds the agent of one conversation.

``Factory`` is the protocol (``create_agent(agent_id, config)``, sync or async,
or a plain callable); ``SessionOpts`` is what it may return next to the agent;
``invoke_factory`` calls any of these shapes and checks the result;
``in_thread`` moves a blocking factory off the event loop. This package
imports ``state``, ``agents``, the options and the errors, never ``sessions``.
"""

from .._errors import (
    FactoryContractError,
    FactoryError,
    FactoryPermissionError,
    FactoryValidationError,
)
from ._factory import Factory, FactoryLike, FactoryResult, SessionOpts
from ._invoke import invoke_factory
from ._thread import in_thread

__all__ = [
    "Factory",
    "FactoryContractError",
    "FactoryError",
    "FactoryLike",
    "FactoryPermissionError",
    "FactoryResult",
    "FactoryValidationError",
    "SessionOpts",
    "in_thread",
    "invoke_factory",
]
