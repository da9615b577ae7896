"""The factories package exports what the design promises, and only that."""

from __future__ import annotations

import sessionvisor.factories as factories
from sessionvisor import _errors


def test_all_lists_the_public_names_and_each_exists() -> None:
    expected = {
        "Factory",
        "SessionOpts",
        "invoke_factory",
        "in_thread",
        "FactoryError",
        "FactoryValidationError",
        "FactoryPermissionError",
        "FactoryContractError",
    }
    assert expected <= set(factories.__all__)
    for name in factories.__all__:
        assert getattr(factories, name) is not None, name


def test_factory_errors_are_the_ones_of_the_error_module() -> None:
    assert factories.FactoryContractError is _errors.FactoryContractError
    assert factories.FactoryValidationError is _errors.FactoryValidationError
    assert factories.FactoryPermissionError is _errors.FactoryPermissionError
