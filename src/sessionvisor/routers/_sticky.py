"""How the runtime consults a router: any router shape, and sticky routing."""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Mapping
from typing import Any, cast

import structlog

from .._errors import RouteChangedError
from .._json import check_json
from ..factories._describe import describe_callable, short_repr
from ..state._store import StoredConversation
from ._route import Route, RouterLike

__all__ = ["check_request_opts", "resolve_route", "resolve_sticky"]

logger = structlog.get_logger("sessionvisor.routers")


def check_request_opts(
    request_opts: Mapping[str, Any] | None, *, conversation_id: str | None = None
) -> dict[str, Any]:
    """Check that ``request_opts`` can be recorded with a conversation.

    Returns:
        A new dict, the JSON round trip of ``request_opts`` (what a store gives
        back later, so a router sees the same values on every start); ``{}``
        for None.

    Raises:
        TypeError: ``request_opts`` is not a mapping with str keys, or holds a
            value that is not JSON.
        ValueError: it is nested more than 64 levels deep, or holds a number
            that is not finite (not every store takes them), a string with a
            lone surrogate, or an integer of more than 1,000 digits.
    """
    where = f" of conversation {conversation_id!r}" if conversation_id is not None else ""
    if request_opts is None:
        return {}
    if not isinstance(request_opts, Mapping):
        raise TypeError(
            f"request_opts{where} must be a mapping of JSON values, "
            f"got {type(request_opts).__name__}"
        )
    bad_keys = [key for key in request_opts if not isinstance(key, str)]
    if bad_keys:
        raise TypeError(f"request_opts{where} must have str keys, got {short_repr(bad_keys)}")
    # Checked without recursion first: the round trip below, the deep copy a router
    # gets and every store recurse, and a client must not choose how deep.
    check_json(dict(request_opts), "request_opts", conversation_id=conversation_id)
    text = json.dumps(dict(request_opts), allow_nan=False)
    return cast(dict[str, Any], json.loads(text))


async def resolve_route(
    router: RouterLike,
    scope: Any,
    conversation_id: str,
    request_opts: Mapping[str, Any] | None,
) -> Route:
    """Ask ``router`` for the route of ``conversation_id``, without stickiness.

    ``router`` is a ``FactoryRouter`` (sync or async ``resolve``) or a plain
    callable ``(scope, conversation_id, request_opts)``, sync or async.

    Returns:
        The ``Route`` the router chose.

    Raises:
        TypeError: ``request_opts`` is not a JSON-serializable mapping, ``router``
            is not a router, or it returned something other than a ``Route``.
        RouteError: the router's own refusal (``RouteValidationError``,
            ``NoRouteError``), unchanged, like anything else it raises.
    """
    opts = check_request_opts(request_opts, conversation_id=conversation_id)
    return await _call_router(router, scope, conversation_id, opts)


async def resolve_sticky(
    router: RouterLike,
    scope: Any,
    conversation_id: str,
    request_opts: Mapping[str, Any] | None,
    *,
    recorded: StoredConversation | None,
    reroute: bool = False,
) -> tuple[Route, dict[str, Any]]:
    """Resolve the route of a conversation so that it keeps the route it was made with.

    For a new conversation (``recorded`` is None) the router sees
    ``request_opts``. Later, it sees the recorded request options with this
    call's merged over them (key by key), so a selector gets the same inputs
    on every start. If it then picks another key than the recorded one, the
    start fails unless ``reroute`` is true. A recorded key of None is not checked.

    Returns:
        ``(route, opts_to_record)``: for a new conversation ``request_opts``;
        after a reroute to another key, this call's ``request_opts`` alone
        (they replace the recorded ones); with ``reroute`` and the same key, the
        merged options; otherwise the recorded options, unchanged (a later
        call's options apply to that call only).

    Raises:
        TypeError: ``request_opts`` is not a JSON-serializable mapping (before
            the router is called), ``router`` is not a router, or it returned
            something other than a ``Route``.
        RouteChangedError: the router picked another key and ``reroute`` is false.
        RouteError: the router's own refusal, unchanged.
    """
    opts = check_request_opts(request_opts, conversation_id=conversation_id)
    if recorded is None:
        return await _call_router(router, scope, conversation_id, opts), opts

    merged = {**recorded.request_opts, **opts}
    route = await _call_router(router, scope, conversation_id, merged)
    old_key = recorded.route_key
    if old_key is None or route.key == old_key:
        # The record stays what made the conversation: this call's options were
        # for this call's router only, unless the caller asked to reroute.
        return route, merged if reroute else dict(recorded.request_opts)
    if not reroute:
        raise RouteChangedError(
            f"conversation {conversation_id!r} was made with route {old_key!r}, but router "
            f"{_router_name(router)} now picks {route.key!r}; pass reroute=True to move it "
            f"to {route.key!r} (its recorded request_opts are then replaced with this call's)"
        )
    logger.info(
        "conversation_rerouted",
        conversation_id=conversation_id,
        old_route_key=old_key,
        route_key=route.key,
    )
    return route, opts


async def _call_router(
    router: Any, scope: Any, conversation_id: str, request_opts: dict[str, Any]
) -> Route:
    resolve = getattr(router, "resolve", None)
    if resolve is None:
        if not callable(router):
            raise TypeError(
                f"{short_repr(router)} is not a router: it has no resolve method "
                "and is not callable"
            )
        resolve = router
    # A deep copy: a router may edit what it is given, and these options are
    # the ones recorded with the conversation.
    result = resolve(scope, conversation_id, copy.deepcopy(request_opts))
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, Route):
        raise TypeError(
            f"router {_router_name(router)} returned {short_repr(result)} for conversation "
            f"{conversation_id!r}; expected a Route"
        )
    return result


def _router_name(router: Any) -> str:
    return describe_callable(router)
