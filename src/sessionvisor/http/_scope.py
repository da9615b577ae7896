"""Who is calling: the trusted scope of a request.

The scope is the only thing that decides who owns a conversation, so it must
come from code the server trusts (a verified token, a session cookie checked by
middleware), never from the request body: ``request_opts`` cannot set it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from starlette.requests import Request

__all__ = [
    "USER_HEADER",
    "USER_QUERY_PARAM",
    "ScopeFunction",
    "header_or_query_scope",
    "header_scope",
]

#: The header ``header_scope`` reads.
USER_HEADER = "X-User"
#: The query parameter ``header_or_query_scope`` also accepts (for ``EventSource``).
USER_QUERY_PARAM = "user"

#: ``scope_from_request(request)``: returns the scope (or an awaitable of it).
ScopeFunction: TypeAlias = Callable[[Request], Any | Awaitable[Any]]

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


def header_or_query_scope(request: Request) -> str | None:
    """Like ``header_scope``, but also accepts ``?user=NAME`` (the header wins).

    A browser's ``EventSource`` cannot set headers, so the demo page names its
    user in the query string of the event stream. It is as unauthenticated as
    ``header_scope`` and meant for the demo only; production replaces it.

    Returns:
        The user name, or None when neither the header nor the parameter is given.
    """
    return _clean(request.headers.get(USER_HEADER)) or _clean(
        request.query_params.get(USER_QUERY_PARAM)
    )
