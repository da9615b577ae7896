"""``store``: the three stores a timer test runs against (PostgreSQL skips outside CI
when no server answers, see ``tests/_support/servers.require_server``)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.state import conftest as _state

#: The same three stores the store contract runs against.
backend = _state.backend


@pytest.fixture
async def store(backend: Any) -> Any:
    return await backend.open()
