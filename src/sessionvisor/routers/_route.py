"""``Route``, what a router answers, and the ``FactoryRouter`` protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeAlias, runtime_checkable

import attrs

from ..factories import FactoryLike
from ..factories._describe import short_repr

__all__ = ["FactoryRouter", "Route", "RouterLike", "check_factory"]


def check_factory(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """attrs validator: ``value`` has ``create_agent`` or is a callable factory."""
    if getattr(value, "create_agent", None) is None and not callable(value):
        raise TypeError(
            f"{attr.name} must be an object with create_agent or a callable "
            f"(agent_id, config), got {short_repr(value)}"
        )


def _optional_str(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{attr.name} must be a str or None, got {short_repr(value)}")


@attrs.frozen
class Route:
    """Where a conversation goes: the factory, its config and the route's key.

    Attributes:
        factory: builds the agent (see ``sessionvisor.factories.Factory``).
        config: opaque, passed verbatim to the factory's ``create_agent``.
        key: which route was taken; recorded at first start so a later start
            that lands elsewhere is noticed (sticky routing). None opts out.
    """

    factory: FactoryLike = attrs.field(validator=check_factory)
    config: Any = None
    key: str | None = attrs.field(default=None, validator=_optional_str)


@runtime_checkable
class FactoryRouter(Protocol):
    """Picks the factory and config of a conversation; ``resolve`` may be async.

    It is consulted on every start of the conversation (first start, wake after
    idle shutdown, restart), with the request options recorded at first start
    merged under the new ones.
    """

    def resolve(
        self, scope: Any, conversation_id: str, request_opts: Mapping[str, Any]
    ) -> Route | Awaitable[Route]: ...


#: What ``resolve_route`` accepts: a ``FactoryRouter`` or a plain callable
#: ``(scope, conversation_id, request_opts) -> Route`` (sync or async).
RouterLike: TypeAlias = FactoryRouter | Callable[[Any, str, Mapping[str, Any]], Any]
