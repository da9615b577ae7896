"""The chat backend over HTTP: REST routes, Server-Sent Events and a demo page.

``create_app(supervisor)`` returns a Starlette app (mountable in FastAPI) that
serves one ``SessionSupervisor``; ``header_scope`` is the demo's way of naming
the caller, to be replaced by real authentication in production. This package
sits on top of ``sessions`` and needs the ``http`` extra (starlette, uvicorn,
PyJWT, ag-ui-protocol).

The routes::

    POST   /conversations/{cid}/messages  {"content", "request_opts"}  -> 202
    GET    /conversations/{cid}/events    Server-Sent Events (Last-Event-ID, ?after=)
    POST   /conversations/{cid}/resume    {"answer", "request_opts"}   -> 202
    POST   /conversations/{cid}/dismiss   -> 200
    POST   /conversations/{cid}/cancel    -> 200
    GET    /conversations/{cid}           status, history, interrupt
    DELETE /conversations/{cid}[?purge=true]
    GET    /sessions   GET /healthz   GET /readyz   GET / (the demo page)
    POST   /ai-sdk/chat   GET /ai-sdk/chat/{id}/stream   the Vercel AI SDK (useChat)
    POST   /ag-ui                                        AG-UI (HttpAgent, CopilotKit)

``jwt_scope(...)`` verifies a bearer JWT (PyJWT) and is the production
``scope_from_request``.
"""

from ._app import DEFAULT_HEARTBEAT, create_app
from ._jwt import AuthenticationFailed, jwt_scope
from ._scope import ScopeFunction, header_or_query_scope, header_scope
from ._sse import close_event_streams

__all__ = [
    "DEFAULT_HEARTBEAT",
    "AuthenticationFailed",
    "ScopeFunction",
    "close_event_streams",
    "create_app",
    "header_or_query_scope",
    "header_scope",
    "jwt_scope",
]
