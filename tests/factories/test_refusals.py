"""A factory's refusals and failures reach the caller unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from sessionvisor.factories import (
    FactoryPermissionError,
    FactoryValidationError,
    in_thread,
    invoke_factory,
)


def _raising(exc: BaseException) -> Any:
    def factory(agent_id: str, config: Any) -> Any:
        raise exc

    return factory


def _raising_async(exc: BaseException) -> Any:
    async def factory(agent_id: str, config: Any) -> Any:
        raise exc

    return factory


@pytest.mark.anyio
@pytest.mark.parametrize("wrap", [_raising, _raising_async, lambda e: in_thread(_raising(e))])
@pytest.mark.parametrize(
    "exc",
    [
        FactoryValidationError("persona 'pirate' is not offered"),
        FactoryPermissionError("user u-1 may not use the analyst"),
        KeyError("missing-setting"),
    ],
    ids=["validation", "permission", "other"],
)
async def test_factory_exception_propagates_as_the_same_object(
    anyio_backend: str, wrap: Any, exc: Exception
) -> None:
    with pytest.raises(type(exc)) as info:
        await invoke_factory(wrap(exc), "a", None)

    assert info.value is exc


def test_refusals_are_also_the_builtin_errors() -> None:
    assert issubclass(FactoryValidationError, ValueError)
    assert issubclass(FactoryPermissionError, PermissionError)
