"""The error tree of DESIGN.md: one base, and each error is also the builtin it names."""

from __future__ import annotations

import pytest

import sessionvisor as sv

TREE = [
    (sv.FactoryError, sv.SessionvisorError),
    (sv.FactoryValidationError, ValueError),
    (sv.FactoryValidationError, sv.FactoryError),
    (sv.FactoryPermissionError, PermissionError),
    (sv.FactoryPermissionError, sv.FactoryError),
    (sv.FactoryContractError, TypeError),
    (sv.FactoryContractError, sv.FactoryError),
    (sv.RouteError, sv.SessionvisorError),
    (sv.RouteValidationError, ValueError),
    (sv.RouteValidationError, sv.RouteError),
    (sv.NoRouteError, LookupError),
    (sv.NoRouteError, sv.RouteError),
    (sv.RouteChangedError, RuntimeError),
    (sv.RouteChangedError, sv.RouteError),
    (sv.RegistryUnavailable, RuntimeError),
    (sv.StoreUnavailable, sv.RegistryUnavailable),
    (sv.NotRunning, LookupError),
    (sv.InvalidStatus, RuntimeError),
    (sv.QueueFull, RuntimeError),
    (sv.MessageRejected, ValueError),
    (sv.MessageTooLarge, ValueError),
    (sv.InvalidAnswer, ValueError),
    (sv.SessionFailedError, RuntimeError),
    (sv.AccessDenied, PermissionError),
    (sv.CorruptStateError, ValueError),
    (sv.StaleWriteError, RuntimeError),
    (sv.SubscriberOverflow, RuntimeError),
]


@pytest.mark.parametrize(("error", "parent"), TREE, ids=lambda c: c.__name__)
def test_each_error_is_also_the_builtin_it_names(error: type, parent: type) -> None:
    assert issubclass(error, parent)
    assert issubclass(error, sv.SessionvisorError)
    assert error.__doc__ and len(error.__doc__.strip().splitlines()) == 1


def test_the_tree_is_drawn_in_the_errors_module_docstring() -> None:
    from sessionvisor import _errors

    doc = _errors.__doc__ or ""
    for error, _ in TREE:
        assert error.__name__ in doc


def test_invalid_status_carries_the_status_and_route_validation_the_errors() -> None:
    assert sv.InvalidStatus("cannot cancel 'c-1': status is idle", "idle").status == "idle"
    err = sv.RouteValidationError("bad", [{"loc": ["persona"], "msg": "missing"}])
    assert err.errors == [{"loc": ["persona"], "msg": "missing"}]


def test_the_pydantic_ai_adapter_raises_the_tree_s_invalid_answer() -> None:
    """A refused answer is a ``SessionvisorError`` and still the ``ValueError`` it was."""
    from sessionvisor.agents.pydantic_ai import InvalidAnswer, answer_to_results

    assert InvalidAnswer is sv.InvalidAnswer
    call = {"tool_call_id": "a", "tool_name": "pay", "args": {}, "kind": "approval"}
    with pytest.raises(sv.SessionvisorError, match="expected True/False") as caught:
        answer_to_results([call], "maybe")
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, sv.InvalidAnswer)
