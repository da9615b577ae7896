"""The public surface: every public module declares ``__all__`` and its names exist."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import sessionvisor

OPTIONAL = {"sessionvisor.agents.pydantic_ai", "sessionvisor.state.postgres"}


def public_modules() -> list[str]:
    names = ["sessionvisor"]
    for info in pkgutil.walk_packages(sessionvisor.__path__, "sessionvisor."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("name", public_modules())
def test_every_public_module_declares_all_and_its_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it lacks: {missing}"
    assert module.__doc__, f"{name} has no docstring saying what lives there"


def test_the_top_level_reexports_the_contracts_names() -> None:
    for name in [
        "SessionSupervisor",
        "SessionHandle",
        "SessionInfo",
        "Delivery",
        "Status",
        "SupervisorOpts",
        "SessionOpts",
        "Route",
        "SingleRouter",
        "KeyedRouter",
        "State",
        "Message",
        "StoredConversation",
        "MemoryStore",
        "SQLiteStore",
        "FunctionAgent",
        "Done",
        "Interrupt",
        "Pause",
        "Turn",
        "StatusChanged",
        "MessageAppended",
        "Delta",
        "MessageQueued",
        "AgentEvent",
        "Restarted",
        "SessionFailed",
        "Shutdown",
    ]:
        assert name in sessionvisor.__all__, name


def test_optional_modules_are_public_too() -> None:
    assert set(public_modules()) >= OPTIONAL
