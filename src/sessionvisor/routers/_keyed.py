"""``KeyedRouter``: a selector names one of several routes."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import structlog
from pydantic import BaseModel

from .._errors import NoRouteError
from ..factories import FactoryLike
from ..factories._describe import describe_callable, short_repr
from ._config import build_config, check_config_model
from ._route import Route

__all__ = ["KeyedRouter", "RouteTarget"]

logger = structlog.get_logger("sessionvisor.routers")

#: One entry of ``KeyedRouter``'s routes: a factory, or a factory and its config model.
RouteTarget: TypeAlias = FactoryLike | tuple[FactoryLike, type[BaseModel] | None]


class KeyedRouter:
    """Route each conversation to the route its selector names.

    ``select(scope, conversation_id, request_opts)`` (sync or async) returns a
    key of ``routes``. A key that is not a route falls back to ``default``
    (logged as ``route_default_used``); without a default it is an error. The
    chosen route's config is built as by ``SingleRouter`` with its own model.
    """

    __slots__ = ("_default", "_routes", "_select")

    def __init__(
        self,
        select: Callable[[Any, str, Mapping[str, Any]], Any],
        routes: Mapping[str, RouteTarget],
        default: str | None = None,
    ) -> None:
        """Check and keep the selector and the routes.

        Args:
            select: ``(scope, conversation_id, request_opts) -> key``, sync or async.
            routes: key to factory, or to ``(factory, config model)``.
            default: the key used when ``select`` names no route, or None.

        Raises:
            TypeError: ``select`` is not callable, a key is not a str, or a
                route is not a factory or ``(factory, model class)``.
            ValueError: ``routes`` is empty, or ``default`` is not one of its keys.
        """
        if not callable(select):
            raise TypeError(f"KeyedRouter select must be callable, got {short_repr(select)}")
        if not isinstance(routes, Mapping):
            raise TypeError(f"KeyedRouter routes must be a mapping, got {short_repr(routes)}")
        if not routes:
            raise ValueError("KeyedRouter needs at least one route")
        self._select = select
        # Copied so the routes cannot change under a running supervisor.
        self._routes: dict[str, tuple[FactoryLike, type[BaseModel] | None]] = {
            _check_key(key): _check_target(key, target) for key, target in routes.items()
        }
        if default is not None and default not in self._routes:
            raise ValueError(
                f"KeyedRouter default {default!r} is not a route; "
                f"known routes: {', '.join(sorted(self._routes))}"
            )
        self._default = default

    @property
    def keys(self) -> tuple[str, ...]:
        """The route keys, in the order given."""
        return tuple(self._routes)

    @property
    def default(self) -> str | None:
        """The key used when the selector names no route."""
        return self._default

    async def resolve(
        self, scope: Any, conversation_id: str, request_opts: Mapping[str, Any]
    ) -> Route:
        """Ask the selector for a key and return that route with its config.

        Returns:
            ``Route(factory, config, key)``; ``key`` is the default's when the
            selector named no route.

        Raises:
            NoRouteError: the selector named no route and there is no default.
            RouteValidationError: the route's config model rejected the request
                options; ``.errors`` is pydantic's error list, JSON-safe.
            Exception: whatever the selector raises propagates unchanged.
        """
        request_opts = request_opts or {}
        key = self._select(scope, conversation_id, request_opts)
        if inspect.isawaitable(key):
            key = await key
        if not (isinstance(key, str) and key in self._routes):
            if self._default is None:
                raise NoRouteError(
                    f"no route {key!r} for conversation {conversation_id!r}: selector "
                    f"{describe_callable(self._select)} named it and there is no default; "
                    f"known routes: {', '.join(sorted(self._routes))}"
                )
            logger.debug(
                "route_default_used",
                conversation_id=conversation_id,
                selected=short_repr(key),
                route_key=self._default,
            )
            key = self._default
        factory, model = self._routes[key]
        return Route(factory, build_config(model, scope, conversation_id, request_opts), key)

    def __repr__(self) -> str:
        return (
            f"KeyedRouter({describe_callable(self._select)}, "
            f"routes={list(self._routes)!r}, default={self._default!r})"
        )


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"KeyedRouter route keys must be str, got {short_repr(key)}")
    return key


def _check_target(key: str, target: Any) -> tuple[FactoryLike, type[BaseModel] | None]:
    if isinstance(target, tuple):
        if len(target) != 2:
            raise TypeError(
                f"KeyedRouter route {key!r} must be a factory or (factory, model), "
                f"got a tuple of {len(target)} items"
            )
        factory, model = target
        model = check_config_model(model, f"KeyedRouter route {key!r} model")
    else:
        factory, model = target, None
    if getattr(factory, "create_agent", None) is None and not callable(factory):
        raise TypeError(
            f"KeyedRouter route {key!r} must be a factory (an object with create_agent "
            f"or a callable (agent_id, config)), got {short_repr(factory)}"
        )
    return factory, model
