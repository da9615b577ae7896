"""The routers package exports what the design promises."""

from __future__ import annotations

import sessionvisor.routers as routers
from sessionvisor import _errors


def test_all_lists_the_public_names_and_each_exists() -> None:
    expected = {
        "FactoryRouter",
        "Route",
        "SingleRouter",
        "KeyedRouter",
        "resolve_route",
        "resolve_sticky",
        "check_request_opts",
        "RouteError",
        "RouteValidationError",
        "NoRouteError",
        "RouteChangedError",
    }
    assert expected <= set(routers.__all__)
    for name in routers.__all__:
        assert getattr(routers, name) is not None, name


def test_route_errors_are_the_ones_of_the_error_module() -> None:
    assert routers.RouteValidationError is _errors.RouteValidationError
    assert routers.NoRouteError is _errors.NoRouteError
    assert routers.RouteChangedError is _errors.RouteChangedError
