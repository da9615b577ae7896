"""Who is calling: the trusted scope of a request.

The scope is the only thing that decides who owns a conversation, so it must
come from code the server trusts (a verified token, a session cookie checked by
middleware), never from the request body: ``request_opts`` cannot set it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeAlias

from starlette.requests import Request

__all__ = [
    "STREAM_ROUTES",
    "USER_HEADER",
    "USER_QUERY_PARAM",
    "ScopeFunction",
    "header_or_query_scope",
    "header_scope",
    "is_stream_get",
]

#: The header ``header_scope`` reads.
USER_HEADER = "X-User"
#: The query parameter ``header_or_query_scope`` also accepts (for ``EventSource``).
USER_QUERY_PARAM = "user"

#: ``scope_from_request(request)``: returns the scope (or an awaitable of it).
ScopeFunction: TypeAlias = Callable[[Request], Any | Awaitable[Any]]

#: The routes (templates inside the app) a browser opens with ``EventSource``,
#: which cannot set headers: the only ones where the query string may name the caller.
STREAM_ROUTES = frozenset({"/conversations/{cid}/events", "/ai-sdk/chat/{cid}/stream"})

_MAX_USER_LENGTH = 256


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > _MAX_USER_LENGTH:
        return None
    return value


def header_scope(request: Request) -> str | None:
    """Return the caller's user name from the ``X-User`` header, or None when absent.

    This is a stand-in for the demo and for tests: **anyone can send any
    header**, so a production server must replace it with a function that
    reads an identity its own middleware verified, for example the subject of
    a JWT checked by authentication middleware::

        def jwt_scope(request):
            return {"owner": request.user.identity}   # set by AuthenticationMiddleware

        app = create_app(supervisor, scope_from_request=jwt_scope)

    Returns:
        The stripped header value (the owner key under the default ``owner_of``),
        or None (an anonymous caller, who sees only unowned conversations) when
        the header is missing, empty or longer than 256 characters.
    """
    return _clean(request.headers.get(USER_HEADER))


def route_matcher(
    templates: Collection[str], methods: Collection[str]
) -> Callable[[Request], bool]:
    """A test of whether a request is one of ``methods`` on one of the route templates
    (``/conversations/{cid}/events``), mounted under a prefix or not."""
    paths = frozenset(templates)
    allowed_methods = frozenset(methods)
    patterns = [re.compile(re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(path))) for path in paths]

    def matches(request: Request) -> bool:
        if request.method not in allowed_methods:
            return False
        # Starlette records the route it matched; its template is exact.
        template = getattr(request.scope.get("route"), "path", None)
        if isinstance(template, str):
            return template in paths
        # Called outside routing (a middleware, an older Starlette): the path inside
        # the app (a mounted app's path still carries its prefix).
        path = str(request.scope.get("path", ""))
        root = str(request.scope.get("root_path", ""))
        if root and path.startswith(root):
            path = path[len(root) :]
        return any(pattern.fullmatch(path) for pattern in patterns)

    return matches


#: Whether a request is a GET (or HEAD) of one of the ``STREAM_ROUTES``. A name in
#: the query string is only taken there: anywhere else it would let a page on
#: another site act for a user with a plain form or link.
is_stream_get = route_matcher(STREAM_ROUTES, ("GET", "HEAD"))


def header_or_query_scope(request: Request) -> str | None:
    """Like ``header_scope``, but a GET of an event stream also accepts ``?user=NAME``.

    A browser's ``EventSource`` cannot set headers, so the demo page names its
    user in the query string of the event stream. Only there: on every other
    route (a POST above all) the parameter is ignored and the caller is
    anonymous without the header, so a cross-site form cannot act for a user.
    The header wins when both are given. It is as unauthenticated as
    ``header_scope`` and meant for the demo only; production replaces it.

    Returns:
        The user name, or None when neither the header nor (on a stream) the
        parameter is given.
    """
    user = _clean(request.headers.get(USER_HEADER))
    if user is None and is_stream_get(request):
        user = _clean(request.query_params.get(USER_QUERY_PARAM))
    return user
