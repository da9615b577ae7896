"""How exceptions become HTTP answers: ``{"error": <name>, "detail": <message>}``.

Client mistakes and refusals carry the runtime's own message. Anything else
(a factory breaking its contract, a corrupt snapshot, a bug) is a 500 whose
body says nothing but "internal error", while the log gets the traceback. A
client that goes away before its body has arrived is not an error of ours: it
is logged at info (``http_client_disconnected``), with no traceback.
"""

from __future__ import annotations

import math
from typing import Any

import structlog
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from .._errors import (
    AccessDenied,
    FactoryPermissionError,
    FactoryValidationError,
    InvalidStatus,
    MessageRejected,
    MessageTooLarge,
    NoRouteError,
    NotRunning,
    QueueFull,
    RateLimited,
    RegistryUnavailable,
    RouteChangedError,
    RouteValidationError,
    SessionFailedError,
    StoreUnavailable,
)

__all__ = ["RETRY_AFTER_SECONDS", "HTTPError", "error_response", "not_found", "response_for"]

_log = structlog.get_logger("sessionvisor.http")

#: ``Retry-After`` of a 503 ``StoreUnavailable``: the command was not stored, and a
#: store outage is either brief or long enough that backing off a little costs nothing.
RETRY_AFTER_SECONDS = 2

# Most specific first: the first class that matches decides.
_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (RouteValidationError, 400),
    (NoRouteError, 400),
    (FactoryValidationError, 400),
    (MessageRejected, 400),
    (FactoryPermissionError, 403),
    (InvalidStatus, 409),
    (RouteChangedError, 409),
    (QueueFull, 429),
    (RegistryUnavailable, 503),
)


class HTTPError(Exception):
    """A client error found by the HTTP layer itself (bad JSON, too large, unknown id)."""

    def __init__(self, status: int, error: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.extra = extra


def error_response(status: int, error: str, detail: str, **extra: Any) -> JSONResponse:
    """Return the JSON error answer ``{"error", "detail", **extra}`` with ``status``."""
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status)


def not_found(conversation_id: str) -> HTTPError:
    """The one answer for a conversation that does not exist *or* belongs to someone else.

    Both look the same, so no route reveals another owner's conversation. (A POST
    to an unused id creates it, so ids should still be unguessable, e.g. UUID4.)
    """
    return HTTPError(404, "NotFound", f"conversation {conversation_id!r} not found")


def response_for(
    exc: Exception, *, conversation_id: str | None, method: str, path: str
) -> JSONResponse:
    """Map an exception raised while serving a request to its JSON answer.

    Unmapped exceptions are logged with their traceback and answered with a
    bare 500, so nothing internal reaches the client.
    """
    if isinstance(exc, HTTPError):
        return _from_http_error(exc)
    if isinstance(exc, ClientDisconnect):
        # Nobody reads this answer; the log says what happened without a traceback.
        _log.info(
            "http_client_disconnected",
            method=method,
            path=path,
            conversation_id=conversation_id,
        )
        return error_response(400, "ClientDisconnected", "the client went away mid-request")
    if isinstance(exc, StoreUnavailable):
        # The only RegistryUnavailable worth retrying soon: nothing was acknowledged.
        response = error_response(503, "StoreUnavailable", str(exc))
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    if isinstance(exc, RateLimited):
        # The owner's messages per minute: retry once a token is back (whole seconds, up).
        response = error_response(429, "RateLimited", str(exc))
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response
    if isinstance(exc, MessageTooLarge):
        return error_response(413, "PayloadTooLarge", str(exc))
    if isinstance(exc, AccessDenied):
        # Never reveal that the conversation exists.
        return _from_http_error(not_found(conversation_id or ""))
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            extra: dict[str, Any] = {}
            if isinstance(exc, RouteValidationError):
                extra["errors"] = exc.errors
            return error_response(status, type(exc).__name__, str(exc), **extra)
    if isinstance(exc, SessionFailedError | NotRunning):
        # The session gave up or stopped under us; its error text may be internal.
        _log.warning(
            "http_session_unavailable",
            method=method,
            path=path,
            conversation_id=conversation_id,
            error=f"{type(exc).__name__}: {exc}",
        )
        detail = (
            f"conversation {conversation_id!r} is not available right now; try again"
            if conversation_id is not None
            else "the session is not available right now; try again"
        )
        return error_response(503, type(exc).__name__, detail)
    _log.error(
        "http_internal_error",
        method=method,
        path=path,
        conversation_id=conversation_id,
        error=f"{type(exc).__name__}: {exc}",
        exc_info=exc,
    )
    return error_response(500, "internal", "internal error")


def _from_http_error(exc: HTTPError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.detail, **exc.extra)
