"""``create_app``: the routes of the chat backend, over one ``SessionSupervisor``."""

from __future__ import annotations

import base64
import hashlib
import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from importlib import resources
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .._errors import AccessDenied
from ..sessions import SessionSummary, SessionSupervisor, Subscription
from ..state import Message
from ._bodies import (
    CancelBody,
    DismissBody,
    ResumeBody,
    SendBody,
    check_conversation_id,
    read_body,
)
from ._display import displayed
from ._errors import HTTPError, error_response, not_found, response_for
from ._openapi import openapi_document, security_of
from ._rewrites import rewrite_routes
from ._scope import ScopeFunction, header_scope
from ._sse import (
    BlindSubscription,
    EventStream,
    StreamRegistry,
    access_as_unknown_would,
    read_as_unknown_would,
    unknown_conversation_start,
)
from ._steps_routes import step_routes
from ._timers import timer_routes

__all__ = ["DEFAULT_HEARTBEAT", "create_app"]

#: Seconds between heartbeat comments on a quiet event stream.
DEFAULT_HEARTBEAT = 15.0
# Room for the request options and the JSON around the message content.
_BODY_SLACK = 64 * 1024
# Worker threads parsing large bodies at once: the parse holds the GIL most of
# the time, so more threads would not parse faster, only starve the event loop.
_BODY_THREADS = 2
_INLINE_SCRIPT = re.compile(r"<script\b[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)

_Endpoint = Callable[[Request], Awaitable[Response]]
_Model = TypeVar("_Model", bound=BaseModel)


def metrics_available() -> bool:
    """True when prometheus-client (the ``metrics`` extra) can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def create_app(
    supervisor: SessionSupervisor,
    *,
    scope_from_request: ScopeFunction = header_scope,
    heartbeat: float | None = DEFAULT_HEARTBEAT,
    max_body_bytes: int | None = None,
    page: bool = True,
    admin: bool = True,
    ai_sdk: bool = True,
    ag_ui: bool = True,
    metrics: bool = True,
) -> Starlette:
    """Return a Starlette app serving ``supervisor`` over HTTP and Server-Sent Events.

    The routes, bodies and status codes are those of the "HTTP" section of the
    design: ``POST /conversations/{cid}/messages``, ``GET
    /conversations/{cid}/events`` (SSE), ``POST .../resume``, ``.../dismiss``,
    ``.../cancel``, ``.../regenerate``, ``PATCH
    /conversations/{cid}/messages/{message_id}`` (edit), ``GET`` and ``DELETE
    /conversations/{cid}``, ``GET
    /sessions``, ``GET /healthz``, ``GET /readyz``, the demo page at ``GET /``,
    the admin page at ``GET /admin`` and this API's OpenAPI document at ``GET
    /openapi.json``.
    Errors answer ``{"error", "detail"}``; a conversation that does not exist
    and one owned by another scope get the same answer (the same 404, or on the
    event streams the same stream of an unused id).

    The app's lifespan enters the supervisor (and leaves it, which drains) when
    nobody entered it yet. Mounted in another app (``fastapi_app.mount("/chat",
    app)``), the parent's lifespan runs instead: enter the supervisor there, or
    pass ``lifespan=app.router.lifespan_context`` to the parent. The app keeps
    the supervisor as ``app.state.supervisor``.

    Args:
        supervisor: the session supervisor to serve.
        scope_from_request: ``(request) -> scope``, sync or async: the trusted
            identity of the caller (the owner of what it creates). The default
            reads an ``X-User`` header and is for demos only; see ``header_scope``.
        heartbeat: seconds of quiet after which an event stream sends a
            ``: ping`` comment; None or 0 disables heartbeats.
        max_body_bytes: the largest request body; default the supervisor's
            ``max_message_bytes`` plus 64 KiB for the rest of the body.
        page: serve the demo chat page at ``GET /``.
        admin: serve the admin page at ``GET /admin`` (the caller's live sessions
            with status, restarts, queue length and last activity, from ``GET
            /admin/sessions``), behind the same ``scope_from_request``.
        ai_sdk: serve the Vercel AI SDK's UI message stream protocol at ``POST
            /ai-sdk/chat`` and ``GET /ai-sdk/chat/{id}/stream`` (for ``useChat``).
        ag_ui: serve AG-UI at ``POST /ag-ui`` (for ``HttpAgent`` and CopilotKit).
        metrics: serve ``GET /metrics`` (Prometheus' text format) when the
            ``metrics`` extra (prometheus-client) is installed.

    Returns:
        The Starlette app.

    Raises:
        TypeError: ``scope_from_request`` is not callable.
        ValueError: ``max_body_bytes`` or ``heartbeat`` is negative.
    """
    if not callable(scope_from_request):
        raise TypeError(f"scope_from_request must be callable, got {scope_from_request!r}")
    if heartbeat is not None and heartbeat < 0:
        raise ValueError(f"heartbeat must be >= 0 seconds or None, got {heartbeat!r}")
    if max_body_bytes is not None and max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes!r}")
    api = _Api(
        supervisor,
        scope_from_request=scope_from_request,
        heartbeat=heartbeat,
        body_limit=max_body_bytes or supervisor.defaults.max_message_bytes + _BODY_SLACK,
    )
    routes = [
        Route("/conversations/{cid}/messages", api.wrap(api.send), methods=["POST"]),
        Route("/conversations/{cid}/events", api.wrap(api.events), methods=["GET"]),
        Route("/conversations/{cid}/resume", api.wrap(api.resume), methods=["POST"]),
        Route("/conversations/{cid}/dismiss", api.wrap(api.dismiss), methods=["POST"]),
        Route("/conversations/{cid}/cancel", api.wrap(api.cancel), methods=["POST"]),
        *rewrite_routes(api),
        *timer_routes(api),
        *step_routes(api),
        # One route for both methods, so a 405 on this path lists both in its Allow header.
        Route("/conversations/{cid}", api.wrap(api.conversation), methods=["GET", "DELETE"]),
        Route("/sessions", api.wrap(api.sessions), methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
    ]
    if page:
        routes.append(Route("/", api.page, methods=["GET"]))
    if ai_sdk:
        from ._aisdk import ai_sdk_routes

        routes.extend(ai_sdk_routes(api))
    if ag_ui:
        from ._agui import ag_ui_routes

        routes.extend(ag_ui_routes(api))
    if admin:
        routes.append(Route("/admin", api.admin_page, methods=["GET"]))
        routes.append(Route("/admin/sessions", api.wrap(api.admin_sessions), methods=["GET"]))
    if metrics and metrics_available():
        from ._metrics import metrics_endpoint

        routes.append(Route("/metrics", metrics_endpoint(supervisor, api.streams), methods=["GET"]))
    routes.append(Route("/openapi.json", api.openapi, methods=["GET"]))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Enter the supervisor only if nobody did: entering twice raises, and the
        # app must not drain a supervisor its owner entered for a wider block.
        if supervisor.phase != "new":
            yield
            return
        async with supervisor:
            try:
                yield
            finally:
                api.streams.close()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception},
    )
    app.state.supervisor = supervisor
    app.state.event_streams = api.streams
    return app


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    names = {404: "NotFound", 405: "MethodNotAllowed"}
    response = error_response(
        exc.status_code,
        names.get(exc.status_code, "HTTPError"),
        str(exc.detail),
    )
    # A 405 must say which methods the path allows (RFC 9110); Starlette puts it here.
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


class _Api:
    """The endpoints; one instance per app."""

    def __init__(
        self,
        supervisor: SessionSupervisor,
        *,
        scope_from_request: ScopeFunction,
        heartbeat: float | None,
        body_limit: int,
    ) -> None:
        self.supervisor = supervisor
        self.scope_from_request = scope_from_request
        self.heartbeat = heartbeat
        self.body_limit = body_limit
        self.streams = StreamRegistry()
        self.body_limiter = anyio.CapacityLimiter(_BODY_THREADS)
        self._pages: dict[str, str] = {}
        self._rendered: dict[tuple[str, str], tuple[str, str]] = {}
        self._openapi: dict[str, Any] | None = None

    def wrap(self, endpoint: _Endpoint) -> _Endpoint:
        """Answer every exception the endpoint raises with its JSON error."""

        async def handle(request: Request) -> Response:
            try:
                return await endpoint(request)
            except Exception as exc:
                # The path names the conversation, or the body did (AI SDK, AG-UI).
                cid = request.path_params.get("cid") or getattr(
                    request.state, "conversation_id", None
                )
                if isinstance(exc, AccessDenied) and isinstance(cid, str):
                    # The 404 of an unknown id, after the same store read.
                    scope = getattr(request.state, "sessionvisor_scope", None)
                    await read_as_unknown_would(self.supervisor, cid, scope=scope)
                response = response_for(
                    exc,
                    conversation_id=cid if isinstance(cid, str) else None,
                    method=request.method,
                    path=request.url.path,
                )
                # e.g. WWW-Authenticate on a 401 from jwt_scope
                response.headers.update(getattr(exc, "headers", None) or {})
                return response

        handle.__name__ = endpoint.__name__
        handle.__doc__ = endpoint.__doc__
        return handle

    async def body(
        self, request: Request, model: type[_Model], *, optional: bool = False
    ) -> _Model:
        """The JSON body validated with ``model``: ``read_body`` with this app's limits."""
        return await read_body(
            request, model, limit=self.body_limit, optional=optional, limiter=self.body_limiter
        )

    async def scope(self, request: Request) -> Any:
        result = self.scope_from_request(request)
        if inspect.isawaitable(result):
            result = await result
        request.state.sessionvisor_scope = result  # for the refusal in ``wrap``
        return result

    async def _target(self, request: Request) -> tuple[str, Any]:
        cid = check_conversation_id(str(request.path_params["cid"]))
        return cid, await self.scope(request)

    async def _require(self, cid: str, scope: Any) -> None:
        """404 unless the conversation exists for this scope (live or stored).

        Another owner's conversation gets the 404 of an unknown id, after the same store read.
        """
        if not (await access_as_unknown_would(self.supervisor, cid, scope=scope)).exists:
            raise not_found(cid)

    # -- routes --------------------------------------------------------------------

    async def send(self, request: Request) -> Response:
        cid, scope = await self._target(request)
        body = await self.body(request, SendBody)
        # The send checks the content (against the session's own limit) before it wakes
        # anything; the start that follows finds the live session (or the node serving it).
        delivery = await self.supervisor.send(
            cid, body.content, scope=scope, request_opts=body.request_opts, message_id=body.id
        )
        info = await self.supervisor.start(cid, scope=scope, request_opts=body.request_opts)
        return JSONResponse(
            {
                "conversation_id": cid,
                "agent_id": info.agent_id,
                "queued": delivery.queued,
                "started": info.started or delivery.started,
            },
            status_code=202,
        )

    async def events(self, request: Request) -> Response:
        cid, scope = await self._target(request)
        self.streams.admit()
        after = _after(request)
        supervisor = self.supervisor
        stack = AsyncExitStack()
        # Another owner's conversation gets the answer of an unknown one, in the
        # same time: every step runs either way, and a refused one still costs
        # what it costs for an id nobody uses.
        subscription: Subscription | BlindSubscription | None = None
        try:
            # Whether the conversation exists now: if not, the stream checks
            # the owner again once someone creates it.
            access = await access_as_unknown_would(supervisor, cid, scope=scope)
            exists, denied = access.exists, access.denied
            try:
                subscription = await stack.enter_async_context(
                    supervisor.subscribe(cid, after=after, scope=scope)
                )
            except AccessDenied:
                denied = True
                await read_as_unknown_would(supervisor, cid, scope=scope)
            try:
                await stack.enter_async_context(supervisor.viewing(cid, scope=scope))
            except AccessDenied:
                denied = True
                await read_as_unknown_would(supervisor, cid, scope=scope)
        except BaseException:
            await stack.aclose()
            raise
        if denied or subscription is None:
            # Hold nothing of the conversation: no subscription, no viewer mark.
            await stack.aclose()
            subscription = BlindSubscription(
                supervisor, unknown_conversation_start(supervisor, cid, after)
            )
            exists = False  # its snapshot gets the check an unknown id's snapshot gets
        if request.method == "HEAD":
            # The access checks ran; a HEAD gets the headers, not an endless stream.
            await stack.aclose()
            return Response(media_type="text/event-stream")
        return EventStream(  # type: ignore[return-value]  # an ASGI response, as Response is
            subscription,
            supervisor=supervisor,
            scope=scope,
            conversation_id=cid,
            verified=exists,
            heartbeat=self.heartbeat,
            registry=self.streams,
            cleanup=stack.aclose,
        )

    async def resume(self, request: Request) -> Response:
        cid, scope = await self._target(request)
        body = await self.body(request, ResumeBody)
        await self._require(cid, scope)
        status = await self.supervisor.resume(
            cid,
            body.answer,
            scope=scope,
            request_opts=body.request_opts,
            interrupt_id=body.interrupt_id,
        )
        return JSONResponse({"conversation_id": cid, "status": status.value}, status_code=202)

    async def dismiss(self, request: Request) -> Response:
        cid, scope = await self._target(request)
        body = await self.body(request, DismissBody, optional=True)
        await self._require(cid, scope)
        status = await self.supervisor.dismiss(cid, scope=scope, request_opts=body.request_opts)
        return JSONResponse({"conversation_id": cid, "status": status.value})

    async def cancel(self, request: Request) -> Response:
        cid, scope = await self._target(request)
        body = await self.body(request, CancelBody, optional=True)
        await self._require(cid, scope)
        status = await self.supervisor.cancel(cid, scope=scope, keep_partial=body.keep_partial)
        return JSONResponse({"conversation_id": cid, "status": status.value})

    async def conversation(self, request: Request) -> Response:
        if request.method == "DELETE":
            return await self.delete(request)
        cid, scope = await self._target(request)
        try:
            state = await self.supervisor.load(cid, scope=scope)
        except AccessDenied:
            await read_as_unknown_would(self.supervisor, cid, scope=scope)
            state = None
        if state is None:
            raise not_found(cid)
        status = await self.supervisor.status(cid, scope=scope)
        messages = [_message_json(m) for m in state.messages]
        messages.extend(_message_json(m, queued=True) for m in state.queued)
        interrupt = state.interrupt.model_dump(mode="json") if state.interrupt else None
        return JSONResponse(
            {
                "conversation_id": cid,
                "status": status.value,
                "messages": messages,
                "interrupt": interrupt,
            }
        )

    async def delete(self, request: Request) -> Response:
        cid, scope = await self._target(request)
        purge = _flag(request, "purge")
        await self._require(cid, scope)
        if purge:
            result = await self.supervisor.delete(cid, scope=scope)
        else:
            result = await self.supervisor.stop(cid, scope=scope)
        return JSONResponse({"result": result})

    async def sessions(self, request: Request) -> Response:
        scope = await self.scope(request)
        running = await self.supervisor.list_running(scope=scope)
        return JSONResponse({"sessions": [_summary_json(s) for s in running]})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        phase = self.supervisor.phase
        if phase == "open" and not self.streams.closing:
            return JSONResponse({"status": "ready"})
        detail = {
            "new": "the session supervisor has not started",
            "draining": "the session supervisor is draining",
        }.get(phase, "the server is shutting down")
        return error_response(503, "RegistryUnavailable", detail)

    async def page(self, request: Request) -> Response:
        return self._static_page(request, "index.html")

    async def admin_page(self, request: Request) -> Response:
        return self._static_page(request, "admin.html")

    def _static_page(self, request: Request, name: str) -> Response:
        # Mounted under a prefix, the page's relative calls need to know it.
        base = request.scope.get("root_path", "").rstrip("/")
        rendered = self._rendered.get((name, base))
        if rendered is None:
            template = self._pages.get(name)
            if template is None:
                template = self._pages[name] = (
                    resources.files("sessionvisor.http")
                    .joinpath("static", name)
                    .read_text(encoding="utf-8")
                )
            html = template.replace("__SESSIONVISOR_BASE__", _js_string(base))
            rendered = self._rendered[(name, base)] = (html, _page_policy(html))
        html, policy = rendered
        return HTMLResponse(
            html,
            headers={
                "cache-control": "no-store",
                "content-security-policy": policy,
                # For browsers that predate CSP's frame-ancestors.
                "x-frame-options": "DENY",
                "x-content-type-options": "nosniff",
                "referrer-policy": "no-referrer",
            },
        )

    async def admin_sessions(self, request: Request) -> Response:
        """``GET /sessions`` plus each session's queue length, for the admin page."""
        scope = await self.scope(request)
        out = []
        for summary in await self.supervisor.list_running(scope=scope):
            row = _summary_json(summary)
            row["queued"] = summary.queued
            out.append(row)
        return JSONResponse({"sessions": out})

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            from .. import __version__

            app = request.app
            self._openapi = openapi_document(
                app.routes,
                version=__version__,
                server_url=request.scope.get("root_path", "") or "/",
                security=security_of(self.scope_from_request),
            )
        return JSONResponse(self._openapi)


# A seq as ``Last-Event-ID`` or ``?after=`` give it (at most 18 digits: an int64).
_SEQ = re.compile(r"[0-9]{1,18}")
_BLANK = " \t"


def _after(request: Request) -> int | None:
    """The seq to resume after: the ``Last-Event-ID`` header (a reconnect), else ``?after=``.

    Both are checked when both are given, so that a bad one is refused even where
    the other wins, as the OpenAPI document describes them.
    """
    header = request.headers.get("last-event-id")
    from_header = None if header is None else _seq(header, "Last-Event-ID", blank_ok=True)
    query = _single(request, "after")
    from_query = None if query is None else _seq(query, "after", blank_ok=False)
    return from_header if from_header is not None else from_query


def _seq(raw: str, source: str, *, blank_ok: bool) -> int | None:
    # ASCII digits only: int() would also take "+3", "1_000" or other scripts'
    # digits, and str.strip() more than blanks.
    value = raw.strip(_BLANK)
    if not value and blank_ok:
        return None  # an EventSource that has no id yet
    if not _SEQ.fullmatch(value):
        raise HTTPError(400, "ValidationError", f"{source} must be a non-negative integer")
    return int(value)


def _single(request: Request, name: str) -> str | None:
    """The query parameter's value; 400 when it is given more than once."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise HTTPError(400, "ValidationError", f"?{name}= must be given at most once")
    return values[0] if values else None


_FLAGS = {"1": True, "true": True, "yes": True, "on": True}
_FLAGS.update({"": False, "0": False, "false": False, "no": False, "off": False})


def _flag(request: Request, name: str) -> bool:
    # Exactly the values the OpenAPI document lists: no case folding, no blanks.
    raw = _single(request, name)
    flag = _FLAGS.get("false" if raw is None else raw)
    if flag is None:
        raise HTTPError(400, "ValidationError", f"?{name}= must be true or false, got {raw!r}")
    return flag


def _message_json(message: Message, *, queued: bool = False) -> dict[str, Any]:
    """A message as the history shows it: its display copy when the preprocessor made one."""
    out = displayed(message).model_dump(mode="json")
    if queued:
        out["queued"] = True
    return out


def _summary_json(summary: SessionSummary) -> dict[str, Any]:
    last = summary.last_activity_at
    return {
        "conversation_id": summary.conversation_id,
        "agent_id": summary.agent_id,
        "status": summary.status.value,
        "restarts": summary.restarts,
        "last_activity_at": last.isoformat() if hasattr(last, "isoformat") else last,
    }


def _page_policy(html: str) -> str:
    """The Content-Security-Policy of a page: its own inline scripts and nothing else.

    The scripts are allowed by their hashes, taken from the page as served, so
    a script injected into it would not run. No page may frame it (clickjacking:
    a hidden frame of the chat under a decoy button).
    """
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' {hashes}".rstrip(),
            # Styles may be inline: a style cannot run code, and the pages set some.
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def _js_string(value: str) -> str:
    import json

    # Escaped so a root path cannot close the script element.
    return json.dumps(value).replace("<", "\\u003c")
