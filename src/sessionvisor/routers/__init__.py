"""Routers: which factory, with which config, builds a conversation's agent.

``FactoryRouter`` is the protocol and ``Route`` its answer; ``SingleRouter``
and ``KeyedRouter`` are the two routers most applications need.
``resolve_route``, ``resolve_sticky`` and ``check_request_opts`` are how the
runtime consults any router and keeps a conversation on the route it was made
with. This package imports ``factories``, ``state`` and the errors, never
``sessions``.
"""

from .._errors import NoRouteError, RouteChangedError, RouteError, RouteValidationError
from ._keyed import KeyedRouter, RouteTarget
from ._route import FactoryRouter, Route, RouterLike
from ._single import SingleRouter
from ._sticky import check_request_opts, resolve_route, resolve_sticky

__all__ = [
    "FactoryRouter",
    "KeyedRouter",
    "NoRouteError",
    "Route",
    "RouteChangedError",
    "RouteError",
    "RouteTarget",
    "RouteValidationError",
    "RouterLike",
    "SingleRouter",
    "check_request_opts",
    "resolve_route",
    "resolve_sticky",
]
